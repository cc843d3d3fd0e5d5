# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/rotate_ca_kubeadm.yml on the kubeadm lab (real kubeadm, etcd, kube-apiserver, kube-controller-manager,
kube-scheduler on cp1..cp3; the kubelet double on every node), judged by real clients only.

A control-plane node unreachable at the start is refused before anything changes. Then, in order (a failed step skips
the later ones): stage writes nothing live and check mode of prepare changes no file;
prepare, promote and finalize of the cluster, front-proxy and etcd CAs each run under the traffic probe (the Go TLS
client failing over between the three apiservers, etcdctl writing through the three etcd members) with 0 failed
requests, 0 certificate failures and 0 lost etcd writes:

- prepare: probe clients holding the old CA alone (old client certificate) and old + new; afterwards every namespace's
  kube-root-ca.crt holds the new CA (published by the real controller-manager) and the test's Deployment is rolled;
- promote: one client holding the old CA alone, one the new CA alone; afterwards every certificate and kubeconfig
  credential of every node verifies with ``openssl verify -x509_strict`` against the new CA alone; front-proxy client
  certificates from the old and the new front-proxy CA both authenticate through the apiserver's requestheader path;
  kube-public/cluster-info holds the new CA;
- finalize: clients holding the new CA alone (new client certificate); afterwards curl holding the old CA alone is
  refused by every apiserver, the front-proxy certificate of the old CA no longer authenticates, kubeadm reads every
  node, every node is Ready;
- the service-account key: a token issued before the rotation authenticates at every apiserver until finalize and is
  refused after it; a token issued after promote authenticates at every apiserver from then on;
- a rerun changes nothing and restarts nothing; a second rotation's promote and then prepare, each rolled back, leave
  every file of every node as it was before the phase, kube-public/cluster-info on the CA the servers use, the cluster
  healthy.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sys
import time

import pytest

import kubeadm_lab
from kubeadm_node import snapshot
from test_kubeadm_lab import pki, playbook, pod_starts, recap, run

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PROBE = os.path.join(os.path.dirname(HERE), "lab", "probe.py")
PLAYBOOK = os.path.join(REPO, "playbooks", "rotate_ca_kubeadm.yml")
STATE = "/var/lib/kubepki/kubeadm-ca"
CA_FILES = {"ca": "pki/ca.crt", "front-proxy-ca": "pki/front-proxy-ca.crt", "etcd-ca": "pki/etcd/ca.crt"}
LEAVES = {"pki/apiserver.crt": "ca", "pki/apiserver-kubelet-client.crt": "ca", "pki/front-proxy-client.crt": "front-proxy-ca",
          "pki/etcd/server.crt": "etcd-ca", "pki/etcd/peer.crt": "etcd-ca", "pki/etcd/healthcheck-client.crt": "etcd-ca",
          "pki/apiserver-etcd-client.crt": "etcd-ca"}
STEPS = {}
PROBE_FIGURES = {}
TOKENS = {}
SA_USER = "system:serviceaccount:default:default"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("kubeadm-ca-lab"))
    state = kubeadm_lab.up(base, kubeadm_lab.build_binaries(), owner_pid=os.getpid())
    try:
        yield state
    finally:
        kubeadm_lab.kubepki_lab.down(base, log=lambda _msg: None)


def needs(*steps):
    missing = [step for step in steps if not STEPS.get(step)]
    if missing:
        pytest.fail("an earlier step failed: %s" % ", ".join(missing))


def rotate(lab, *args, timeout=1500):
    # the kubelet double re-reads kubelet.conf before every heartbeat; there is no kubelet unit to restart
    return playbook(lab, "-e", '{"kubeadm_ca_rotation_kubelet_restart_command": []}', *args, timeout=timeout, path=PLAYBOOK)


def node_files(lab):
    return {h["name"]: snapshot(pki(h)) for h in lab["hosts"]}


def pems(path):
    with open(path, encoding="ascii") as handle:
        return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", handle.read(), re.S)


def write(path, data):
    with open(path, "w" if isinstance(data, str) else "wb") as handle:
        handle.write(data)
    return path


def verify(cert_pem, ca_pem, work):
    """openssl verify -x509_strict of cert_pem against ca_pem alone."""
    result = run(["openssl", "verify", "-x509_strict", "-CAfile", write(os.path.join(work, "ca.pem"), ca_pem),
                  write(os.path.join(work, "leaf.pem"), cert_pem)])
    return result.returncode == 0


def kubeconfig_cert(path):
    import yaml  # pylint: disable=import-outside-toplevel

    with open(path, encoding="utf-8") as handle:
        user = yaml.safe_load(handle)["users"][0]["user"]
    return base64.b64decode(user["client-certificate-data"]).decode("ascii"), base64.b64decode(user["client-key-data"])


def start_probe(lab, out, *, old_ca, current_ca, cert, key, etcd_ca, etcd_cert, etcd_key):
    result = run([sys.executable, PROBE, "start", "--out", out, "--lab-state", os.path.join(lab["base"], "state.json"),
                  "--lab-port", "6443", "--lab-etcd-port", "2379", "--path", "/version",
                  "--old-ca", old_ca, "--current-ca-file", current_ca, "--client-cert", cert, "--client-key", key,
                  "--etcd-cacert", etcd_ca, "--etcd-cert", etcd_cert, "--etcd-key", etcd_key,
                  # a phase restarts each of the 3 apiservers once; one restart may cost a client two blips (a 503
                  # during the graceful stop, then the refused connection it fails over from)
                  "--interval", "0.5", "--duration", "1200", "--restarts", "6"], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def stop_probe(out):
    run([sys.executable, PROBE, "stop", "--out", out, "--timeout", "90"], timeout=120)
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def judge(summary, phase, seconds):
    kinds = summary["kinds"]
    detail = {kind: {k: kinds[kind].get(k) for k in ("ok", "fail", "failovers", "cert_failures", "writes")} for kind in kinds}
    PROBE_FIGURES[phase] = detail
    sys.stderr.write("\n%s %.1f s; probe %s\n" % (phase, seconds, json.dumps(detail)))
    # 0 certificate failures and 0 lost writes; a failed request is an availability blip (a real apiserver answers
    # "503 apiserver is shutting down" to a request that reaches it during its graceful stop), counted in the verdict's
    # blips, which stay within --restarts
    for kind in ("old", "current", "etcd"):
        assert kinds[kind]["ok"] > 10 and kinds[kind]["cert_failures"] == 0, detail
    assert kinds["etcd"]["writes"]["lost"] == 0, detail
    assert summary["verdict"]["ok"], (summary["verdict"], detail)


def material(lab, work):
    """Snapshots of cp1's files a probe client holds: CA certificates, admin and etcd client credentials."""
    cp1 = kubeadm_lab.control_planes(lab)[0]
    os.makedirs(work, exist_ok=True)
    cert, key = kubeconfig_cert(pki(cp1, "admin.conf"))
    files = {"admin.crt": cert, "admin.key": key}
    for src, dst in (("pki/ca.crt", "ca.crt"), ("pki/etcd/ca.crt", "etcd-ca.crt"), ("pki/apiserver-etcd-client.crt", "etcd.crt"),
                     ("pki/apiserver-etcd-client.key", "etcd.key"), ("pki/front-proxy-ca.crt", "fp-ca.crt"),
                     ("pki/front-proxy-ca.key", "fp-ca.key")):
        with open(pki(cp1, src), "rb") as handle:
            files[dst] = handle.read()
    return {name: write(os.path.join(work, name), data) for name, data in files.items()}


def staged(lab, relative):
    return kubeadm_lab.host_path(kubeadm_lab.control_planes(lab)[0], STATE + "/staged/" + relative)


def front_proxy_user(lab, host, ca_cert, ca_key, work, ca_file):
    """The user the apiserver of host sees for a request through its requestheader path: a front-proxy-client
    certificate signed by (ca_cert, ca_key) with openssl, X-Remote-User alice. None when refused."""
    key, csr, crt = (os.path.join(work, n) for n in ("fp.key", "fp.csr", "fp.crt"))
    for argv in (["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-subj", "/CN=front-proxy-client",
                  "-out", csr],
                 ["openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
                  "-extfile", write(os.path.join(work, "ext.cnf"), "extendedKeyUsage=clientAuth\n"), "-out", crt]):
        assert run(argv).returncode == 0
    credentials = ["--cert", crt, "--key", key, "-H", "X-Remote-User: alice", "-H", "X-Remote-Group: kubepki-test"]
    return self_subject_review(host, ca_file, credentials)


def self_subject_review(host, ca_file, credentials):
    """The user host's apiserver sees for a SelfSubjectReview made with credentials; None when it answers 401.
    HTTP/1.1: over HTTP/2 Go's server may reset the stream of a refused POST whose body it did not read, and curl then
    reports a partial transfer (18) instead of the 401 (seen once in CI); any other answer fails the test."""
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    result = run(["curl", "-sS", "--http1.1", "--max-time", "10", "--noproxy", "*", "--cacert", ca_file] + credentials +
                 ["-H", "Content-Type: application/json", "-X", "POST", "--data", body, "-w", "\n%{http_code}",
                  "https://%s:6443/apis/authentication.k8s.io/v1/selfsubjectreviews" % host["address"]])
    answer, status = ("\n" + result.stdout).rsplit("\n", 1)
    assert result.returncode == 0 and status in ("201", "401"), (host["name"], result.returncode, result.stdout, result.stderr)
    if status == "401":
        return None
    return json.loads(answer)["status"]["userInfo"]["username"]


def token_user(host, token, ca_file):
    """The user host's apiserver authenticates a bearer token as (TokenReview through SelfSubjectReview); None: 401."""
    return self_subject_review(host, ca_file, ["-H", "Authorization: Bearer " + token])


def new_token(lab):
    """A token of default/default from the real TokenRequest API (signed with the signing key of cp1's apiserver)."""
    cp1 = kubeadm_lab.control_planes(lab)[0]
    for _attempt in range(30):  # the controller-manager creates the default ServiceAccount shortly after start
        result = kubeadm_lab.kubectl(cp1, "create", "token", "default", "--duration", "6h")
        if result.returncode == 0:
            return result.stdout.strip()
        time.sleep(2)
    raise AssertionError(result.stderr)


def assert_no_key_material(output, stage_dir):
    """No staged key in a -vvv run's output: neither its PEM nor its base64 (slurp's form) nor one of its lines."""
    assert "PRIVATE KEY" not in output
    for root, _dirs, files in os.walk(stage_dir):
        for name in (f for f in files if f.endswith(".key")):
            with open(os.path.join(root, name), "rb") as handle:
                data = handle.read()
            body = [line for line in data.decode("ascii").splitlines() if not line.startswith("-----")]
            assert base64.b64encode(data).decode("ascii")[:64] not in output, name
            assert not any(line in output for line in body[1:-1]), name


def test_00_an_unreachable_control_plane_node_is_refused_before_anything_changes(lab):
    with open(lab["inventory"], encoding="utf-8") as handle:
        text = handle.read()
    # a fourth control-plane node nobody answers for (loopback, a closed port)
    inventory = write(os.path.join(lab["base"], "inventory-unreachable.ini"),
                      text.replace("[control_plane]\n", "[control_plane]\ncp4 ansible_host=127.0.0.1 ansible_port=1\n", 1))
    before = node_files(lab)
    rc, output, _seconds = rotate(dict(lab, inventory=inventory), "-e", "kubeadm_ca_rotation_phase=prepare",
                                  "-e", "kubeadm_ca_rotation_id=unreachable")
    assert rc != 0 and "unreachable (or its record could not be read, see above): cp4; nothing was changed" in output, output[-3000:]
    assert node_files(lab) == before
    assert not any(os.path.exists(kubeadm_lab.host_path(h, "/var/lib/kubepki/unreachable")) for h in lab["hosts"])


def test_01_stage_and_check_mode_change_no_live_file(lab):
    cp1 = kubeadm_lab.control_planes(lab)[0]
    assert kubeadm_lab.kubectl(cp1, "create", "deployment", "consumer", "--image", "registry.k8s.io/pause:3.10").returncode == 0
    bootstrap = kubeadm_lab.kubeadm(cp1, lab["kubeadm"]["bin_dir"], "init", "phase", "bootstrap-token", "--config",
                                    kubeadm_lab.CONFIG_IN_NODE)
    assert "bootstrap" in bootstrap.lower(), bootstrap
    TOKENS["old"] = new_token(lab)
    ca_file = pki(cp1, "pki/ca.crt")
    assert all(token_user(h, TOKENS["old"], ca_file) == SA_USER for h in kubeadm_lab.control_planes(lab))
    before = node_files(lab)
    rc, output, _seconds = rotate(lab, "-vvv", "-e", "kubeadm_ca_rotation_phase=stage")
    assert rc == 0, output[-5000:]
    assert node_files(lab) == before
    assert_no_key_material(output, kubeadm_lab.host_path(cp1, STATE + "/staged"))
    for host in lab["hosts"]:
        stage_dir = kubeadm_lab.host_path(host, STATE + "/staged")
        names = sorted(os.path.relpath(os.path.join(r, f), stage_dir) for r, _d, fs in os.walk(stage_dir) for f in fs)
        keys = [n for n in names if n.endswith(".key")]
        # per CA: new, key, cross, previous (workers no keys); the service-account key and the previous public keys
        assert len(names) == (14 if host["name"].startswith("cp") else 10), (host["name"], names)
        assert all(os.stat(os.path.join(stage_dir, k)).st_mode & 0o777 == 0o600 for k in keys), host["name"]
    starts = {h["name"]: pod_starts(h) for h in kubeadm_lab.control_planes(lab)}
    rc, output, _seconds = rotate(lab, "--check", "-e", "kubeadm_ca_rotation_phase=prepare")
    assert rc == 0, output[-5000:]
    assert "(check mode: the plan, nothing written)" in output, output[-3000:]
    assert node_files(lab) == before
    assert {h["name"]: pod_starts(h) for h in kubeadm_lab.control_planes(lab)} == starts
    STEPS["staged"] = True


def test_02_prepare_under_probe(lab):
    needs("staged")
    work = os.path.join(lab["base"], "prepare")
    files = material(lab, os.path.join(work, "files"))
    with open(files["ca.crt"], encoding="ascii") as old, open(staged(lab, "ca.crt"), encoding="ascii") as new:
        both = write(os.path.join(work, "both.crt"), old.read() + new.read())
    start_probe(lab, os.path.join(work, "probe"), old_ca=files["ca.crt"], current_ca=both, cert=files["admin.crt"],
                key=files["admin.key"], etcd_ca=files["etcd-ca.crt"], etcd_cert=files["etcd.crt"], etcd_key=files["etcd.key"])
    try:
        rc, output, seconds = rotate(lab, "-e", "kubeadm_ca_rotation_phase=prepare")
    finally:
        summary = stop_probe(os.path.join(work, "probe"))
    assert rc == 0, output[-5000:]
    judge(summary, "prepare", seconds)
    cp1 = kubeadm_lab.control_planes(lab)[0]
    new_pem = pems(staged(lab, "ca.crt"))[0]
    configmaps = json.loads(kubeadm_lab.kubectl(cp1, "get", "configmaps", "-A", "--field-selector",
                                                "metadata.name=kube-root-ca.crt", "-o", "json").stdout)["items"]
    assert len(configmaps) >= 4 and all(new_pem in item["data"]["ca.crt"] for item in configmaps), configmaps
    deployment = json.loads(kubeadm_lab.kubectl(cp1, "get", "deployment", "consumer", "-o", "json").stdout)
    assert deployment["spec"]["template"]["metadata"]["annotations"]["kubepki.io/ca-rotation"] == "kubeadm-ca"
    STEPS["prepared"] = True


def test_03_promote_under_probe(lab):
    needs("prepared")
    work = os.path.join(lab["base"], "promote")
    files = material(lab, os.path.join(work, "files"))
    old_ca = write(os.path.join(work, "old.crt"), pems(files["ca.crt"])[0])
    new_ca = write(os.path.join(work, "new.crt"), pems(staged(lab, "ca.crt"))[0])
    old_fp = write(os.path.join(work, "old-fp.crt"), pems(files["fp-ca.crt"])[0])
    start_probe(lab, os.path.join(work, "probe"), old_ca=old_ca, current_ca=new_ca, cert=files["admin.crt"],
                key=files["admin.key"], etcd_ca=files["etcd-ca.crt"], etcd_cert=files["etcd.crt"], etcd_key=files["etcd.key"])
    try:
        rc, output, seconds = rotate(lab, "-e", "kubeadm_ca_rotation_phase=promote")
    finally:
        summary = stop_probe(os.path.join(work, "probe"))
    assert rc == 0, output[-5000:]
    judge(summary, "promote", seconds)
    new = {name: pems(staged(lab, path[len("pki/"):]))[0] for name, path in CA_FILES.items()}
    for host in lab["hosts"]:
        for path, ca in LEAVES.items():
            if os.path.exists(pki(host, path)):
                assert verify(pems(pki(host, path))[0], new[ca], work), (host["name"], path)
        for conf in ("admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"):
            if os.path.exists(pki(host, conf)):
                assert verify(kubeconfig_cert(pki(host, conf))[0], new["ca"], work), (host["name"], conf)
                assert not verify(kubeconfig_cert(pki(host, conf))[0], pems(old_ca)[0], work), (host["name"], conf)
    cp1 = kubeadm_lab.control_planes(lab)[0]
    cluster_info = json.loads(kubeadm_lab.kubectl(cp1, "-n", "kube-public", "get", "configmap", "cluster-info", "-o", "json").stdout)
    data = re.search(r"certificate-authority-data:\s*(\S+)", cluster_info["data"]["kubeconfig"]).group(1)
    assert base64.b64decode(data).decode("ascii") == new["ca"]
    for host in kubeadm_lab.control_planes(lab):
        assert front_proxy_user(lab, host, old_fp, files["fp-ca.key"], work, new_ca) == "alice", host["name"]
        assert front_proxy_user(lab, host, staged(lab, "front-proxy-ca.crt"), staged(lab, "front-proxy-ca.key"), work,
                                new_ca) == "alice", host["name"]
    assert "sha256:" in output and "new sha256:" in output
    for host in lab["hosts"]:  # the worker's request keys went into its kubelet credential; no spare copy is kept
        requests_dir = kubeadm_lab.host_path(host, STATE + "/requests")
        assert not os.path.isdir(requests_dir) or not os.listdir(requests_dir), (host["name"], os.listdir(requests_dir))
    TOKENS["new"] = new_token(lab)  # signed with the new service-account key
    for host in kubeadm_lab.control_planes(lab):
        assert token_user(host, TOKENS["old"], new_ca) == SA_USER, host["name"]
        assert token_user(host, TOKENS["new"], new_ca) == SA_USER, host["name"]
    STEPS["promoted"] = True


def test_04_finalize_under_probe(lab):
    needs("promoted")
    work = os.path.join(lab["base"], "finalize")
    files = material(lab, os.path.join(work, "files"))
    new_ca = write(os.path.join(work, "new.crt"), pems(staged(lab, "ca.crt"))[0])
    old_ca = write(os.path.join(work, "old.crt"), pems(staged(lab, "ca-previous.crt"))[0])
    new_etcd = write(os.path.join(work, "new-etcd.crt"), pems(staged(lab, "etcd/ca.crt"))[0])
    start_probe(lab, os.path.join(work, "probe"), old_ca=new_ca, current_ca=new_ca, cert=files["admin.crt"],
                key=files["admin.key"], etcd_ca=new_etcd, etcd_cert=files["etcd.crt"], etcd_key=files["etcd.key"])
    try:
        rc, output, seconds = rotate(lab, "-e", "kubeadm_ca_rotation_phase=finalize")
    finally:
        summary = stop_probe(os.path.join(work, "probe"))
    assert rc == 0, output[-5000:]
    judge(summary, "finalize", seconds)
    for host in lab["hosts"]:
        for name, path in CA_FILES.items():
            if os.path.exists(pki(host, path)):
                assert pems(pki(host, path)) == pems(staged(lab, path[len("pki/"):])), (host["name"], path)
    for host in kubeadm_lab.control_planes(lab):
        refused = run(["curl", "-sS", "--max-time", "10", "--noproxy", "*", "--cacert", old_ca,
                       "https://%s:6443/version" % host["address"]])
        assert refused.returncode == 60, (host["name"], refused.returncode, refused.stderr)  # 60: peer certificate not trusted
        accepted = run(["curl", "-sS", "--max-time", "10", "--noproxy", "*", "--cacert", new_ca,
                        "--cert", files["admin.crt"], "--key", files["admin.key"], "https://%s:6443/version" % host["address"]])
        assert accepted.returncode == 0, (host["name"], accepted.stderr)
        assert token_user(host, TOKENS["new"], new_ca) == SA_USER, host["name"]
        assert token_user(host, TOKENS["old"], new_ca) is None, host["name"]  # its key is gone from sa.pub
        assert front_proxy_user(lab, host, os.path.join(work, "..", "promote", "old-fp.crt"),
                                os.path.join(work, "..", "promote", "files", "fp-ca.key"), work, new_ca) is None, host["name"]
        report = json.loads(kubeadm_lab.kubeadm(host, lab["kubeadm"]["bin_dir"], "certs", "check-expiration", "--config",
                                                kubeadm_lab.CONFIG_IN_NODE, "-o", "json"))
        missing = [item["name"] for item in report["certificates"] if item["missing"]]
        assert missing in ([], ["super-admin.conf"]), (host["name"], missing)  # joined nodes have no super-admin.conf
        assert all(item["residualTime"] > 0 for item in report["certificates"] if not item["missing"]), report
    kubeadm_lab.wait_ready(lab, 120)
    STEPS["finalized"] = True


def test_05_rerun_changes_and_restarts_nothing(lab):
    needs("finalized")
    before, starts = node_files(lab), {h["name"]: pod_starts(h) for h in kubeadm_lab.control_planes(lab)}
    rc, output, _seconds = rotate(lab)
    assert rc == 0, output[-5000:]
    assert all(row["changed"] == 0 for row in recap(output).values()), recap(output)
    assert node_files(lab) == before
    assert {h["name"]: pod_starts(h) for h in kubeadm_lab.control_planes(lab)} == starts


def changed_files(before, after):
    """Per host, the files that differ (the manifests carry the restart annotation: left out)."""
    return {name: sorted(k for k in set(before[name]) | set(after[name])
                         if before[name].get(k) != after[name].get(k) and not k.startswith("manifests/"))
            for name in before}


def cluster_info_ca(lab):
    cp1 = kubeadm_lab.control_planes(lab)[0]
    info = json.loads(kubeadm_lab.kubectl(cp1, "-n", "kube-public", "get", "configmap", "cluster-info", "-o", "json").stdout)
    return base64.b64decode(re.search(r"certificate-authority-data:\s*(\S+)", info["data"]["kubeconfig"]).group(1)).decode("ascii")


def test_06_rollback_of_promote_then_of_prepare_restores_every_file(lab):
    needs("finalized")  # a second rotation, after the first
    before, discovery = node_files(lab), cluster_info_ca(lab)
    second = ("-e", "kubeadm_ca_rotation_id=second")
    rc, output, _seconds = rotate(lab, "-e", "kubeadm_ca_rotation_phase=prepare", *second)
    assert rc == 0, output[-5000:]
    prepared = node_files(lab)
    assert prepared != before
    rc, output, _seconds = rotate(lab, "-e", "kubeadm_ca_rotation_phase=promote", *second)
    assert rc == 0, output[-5000:]
    assert any(changed_files(prepared, node_files(lab)).values())
    assert cluster_info_ca(lab) != discovery
    for phase, state in (("promote", prepared), ("prepare", before)):  # each rollback: the last phase begun
        rc, output, _seconds = rotate(lab, "-e", "kubeadm_ca_rotation_phase=rollback", *second)
        assert rc == 0, output[-5000:]
        assert "rolling back %s" % phase in output
        assert changed_files(state, node_files(lab)) == {h["name"]: [] for h in lab["hosts"]}, phase
        assert cluster_info_ca(lab) == discovery, phase  # joins trust the CA the servers use again
        kubeadm_lab.wait_ready(lab, 120)
    cp1 = kubeadm_lab.control_planes(lab)[0]
    assert kubeadm_lab.kubectl(cp1, "get", "nodes").returncode == 0
    assert all(token_user(h, TOKENS["new"], pki(cp1, "pki/ca.crt")) == SA_USER for h in kubeadm_lab.control_planes(lab))
    shutil.rmtree(os.path.join(lab["base"], "prepare"), ignore_errors=True)
