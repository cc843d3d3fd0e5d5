# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kubeadm lab (tests/kube/kubeadm_lab.py): a running control plane of real Kubernetes binaries on cp1..cp3 and a
worker, judged by the real tools only.

In order (one scenario; a failed step skips the later ones): the control plane runs (every node Ready through the real
apiserver, three etcd members, the controller-manager publishes kube-root-ca.crt); cert_check equals ``kubeadm certs
check-expiration`` on every control-plane node; playbooks/renew_kubeadm.yml in check mode changes no file; the renewal
with force runs node by node while the traffic probe (tests/lab/probe.py: the Go TLS client failing over between the
three apiservers, etcdctl over the three members) runs, with 0 failed requests, 0 certificate errors and 0 lost etcd
writes; kubeadm then reports every certificate renewed, kubectl works with the renewed admin.conf and its refreshed
copy, the kubelet doubles stay Ready, and every static pod runs a process started after the renewal; a rerun renews
nothing and restarts nothing.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import base64
import ssl
import urllib.request

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import kubeadm_lab
from kubeadm_node import snapshot
from test_expiry_parity import assert_same

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PROBE = os.path.join(os.path.dirname(HERE), "lab", "probe.py")
PLAYBOOK = os.path.join(REPO, "playbooks", "renew_kubeadm.yml")
SA_PLAYBOOK = os.path.join(REPO, "playbooks", "rotate_service_key_kubeadm.yml")
ISSUER = "https://kubernetes.default.svc.cluster.local"  # kubeadm's default --service-account-issuer
STATIC_PODS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
STEPS = {}  # step name -> outcome, so that a later step does not run on a failed earlier one


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The lab, its sa.pub also trusting a key of an earlier rotation (kept in state["previous_sa_key"])."""
    base = str(tmp_path_factory.mktemp("kubeadm-lab"))
    previous = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = previous.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    state = kubeadm_lab.up(base, kubeadm_lab.build_binaries(), owner_pid=os.getpid(), previous_sa_pub=public_pem)
    state["previous_sa_key"] = previous
    try:
        yield state
    finally:
        kubeadm_lab.kubepki_lab.down(base, log=lambda _msg: None)


def needs(*steps):
    missing = [step for step in steps if not STEPS.get(step)]
    if missing:
        pytest.fail("an earlier step failed: %s" % ", ".join(missing))


def playbook(state, *args, timeout=1500, path=PLAYBOOK):
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_DEPRECATION_WARNINGS="False", ANSIBLE_RETRY_FILES_ENABLED="False")
    started = time.monotonic()
    result = run([shutil.which("ansible-playbook") or "ansible-playbook", "-i", state["inventory"], path, *args],
                 timeout=timeout, env=env, cwd=REPO)
    output = result.stdout + result.stderr
    with open(os.path.join(state["base"], "playbook-%d.log" % int(time.time())), "w", encoding="utf-8") as handle:
        handle.write(output)
    return result.returncode, output, time.monotonic() - started


def recap(output):
    """PLAY RECAP counters per host."""
    rows = {}
    for line in output.split("PLAY RECAP")[-1].splitlines():
        if ":" in line and "ok=" in line:
            host, counters = line.split(":", 1)
            rows[host.strip()] = {k: int(v) for k, v in (item.split("=") for item in counters.split())}
    return rows


def pki(host, relative=""):
    return kubeadm_lab.host_path(host, "/etc/kubernetes/" + relative)


def kubeadm_report(state, host):
    out = kubeadm_lab.kubeadm(host, state["kubeadm"]["bin_dir"], "certs", "check-expiration", "--config", kubeadm_lab.CONFIG_IN_NODE, "-o", "json")
    return json.loads(out)


def pod_starts(host):
    """Static pod -> start times of its processes on host (from the kubelet double's pods.json and /proc)."""
    with open(kubeadm_lab.host_path(host, kubeadm_lab.DOUBLE_STATE + "/pods.json"), encoding="utf-8") as handle:
        pods = json.load(handle)["pods"]
    return {name: sorted(c["started_at"] for c in pod["containers"].values() if c.get("pid")) for name, pod in pods.items()}


def all_files(state):
    return {host["name"]: snapshot(pki(host)) for host in kubeadm_lab.control_planes(state)}


def test_01_control_plane_runs(lab):
    cp1 = kubeadm_lab.control_planes(lab)[0]
    ready = lab["kubeadm"]["ready"]
    assert all(status == "True" for rows in ready.values() for status in rows.values()) and len(ready) == 3, ready
    members = kubeadm_lab.in_host(cp1, ["etcdctl", "--endpoints", "https://127.0.0.1:2379", "--cacert",
                                        "/etc/kubernetes/pki/etcd/ca.crt", "--cert", "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
                                        "--key", "/etc/kubernetes/pki/etcd/healthcheck-client.key", "member", "list", "-w", "json"],
                                  env=dict(os.environ, ETCDCTL_API="3"))
    assert members.returncode == 0, members.stderr
    assert sorted(m["name"] for m in json.loads(members.stdout)["members"]) == ["cp1", "cp2", "cp3"]
    deadline = time.monotonic() + 120
    while True:  # the controller-manager's root-ca-cert-publisher: it runs, with the cluster CA
        published = kubeadm_lab.kubectl(cp1, "-n", "default", "get", "configmap", "kube-root-ca.crt", "-o", "json")
        if published.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert published.returncode == 0, published.stderr
    with open(pki(cp1, "pki/ca.crt"), encoding="utf-8") as handle:
        assert json.loads(published.stdout)["data"]["ca.crt"].strip() == handle.read().strip()
    sys.stderr.write("\nkubeadm lab up in %s s; RSS MiB per host %s\n"
                     % (lab["timings"]["kubeadm_up_seconds"], kubeadm_lab.rss_per_host(lab)))
    STEPS["up"] = True


def test_02_expiry_parity_on_every_control_plane_node(lab):
    needs("up")
    tree = os.path.join(lab["base"], "cert-check")
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1", ANSIBLE_LOAD_CALLBACK_PLUGINS="True",
               ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree", ANSIBLE_CALLBACK_TREE_DIR=tree)
    result = run([shutil.which("ansible") or "ansible", "-i", lab["inventory"], "control_plane", "-m", "kubepki.certs.cert_check",
                  "-a", json.dumps({"distribution": "kubeadm", "kubeadm_output": True})], env=env, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for host in kubeadm_lab.control_planes(lab):
        with open(os.path.join(tree, host["name"]), encoding="utf-8") as handle:
            ours = json.load(handle)["kubeadm_expiration_info"]
        assert_same(ours, kubeadm_report(lab, host))
    assert [item["missing"] for item in kubeadm_report(lab, kubeadm_lab.control_planes(lab)[1])["certificates"]
            if item["name"] == "super-admin.conf"] == [True]
    STEPS["parity"] = True


def test_03_check_mode_changes_nothing(lab):
    needs("up")
    before, starts = all_files(lab), {h["name"]: pod_starts(h) for h in kubeadm_lab.control_planes(lab)}
    rc, output, _seconds = playbook(lab, "--check", "-e", "kubeadm_renew_force=true")
    assert rc == 0, output[-4000:]
    assert "check mode: the plan" in output and "would renew apiserver" in output, output[-3000:]
    assert all_files(lab) == before
    assert {h["name"]: pod_starts(h) for h in kubeadm_lab.control_planes(lab)} == starts
    STEPS["check"] = True


def start_probe(lab, out):
    snap = os.path.join(out, "files")
    os.makedirs(snap)
    cp1 = kubeadm_lab.control_planes(lab)[0]
    user = kubeadm_lab.yaml_user(pki(cp1, "admin.conf"))
    for name, data in (("admin.crt", user["client-certificate-data"]), ("admin.key", user["client-key-data"])):
        kubeadm_lab.write_b64(os.path.join(snap, name), data)
    for src, dst in (("pki/ca.crt", "ca.crt"), ("pki/etcd/ca.crt", "etcd-ca.crt"), ("pki/apiserver-etcd-client.crt", "etcd.crt"),
                     ("pki/apiserver-etcd-client.key", "etcd.key")):
        shutil.copyfile(pki(cp1, src), os.path.join(snap, dst))
    result = run([sys.executable, PROBE, "start", "--out", out, "--lab-state", os.path.join(lab["base"], "state.json"),
                  "--lab-port", "6443", "--lab-etcd-port", "2379", "--path", "/version",
                  "--old-ca", os.path.join(snap, "ca.crt"), "--current-ca-file", os.path.join(snap, "ca.crt"),
                  "--client-cert", os.path.join(snap, "admin.crt"), "--client-key", os.path.join(snap, "admin.key"),
                  "--etcd-cacert", os.path.join(snap, "etcd-ca.crt"), "--etcd-cert", os.path.join(snap, "etcd.crt"),
                  "--etcd-key", os.path.join(snap, "etcd.key"), "--interval", "0.5", "--duration", "1200",
                  "--restarts", "6"], timeout=300)  # 3 apiserver restarts, each at most a 503 and a failover
    assert result.returncode == 0, result.stdout + result.stderr


def stop_probe(out):
    run([sys.executable, PROBE, "stop", "--out", out, "--timeout", "90"], timeout=120)
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def test_04_renewal_under_probe(lab):
    needs("up", "check")
    cps = kubeadm_lab.control_planes(lab)
    out = os.path.join(lab["base"], "probe")
    started = time.time()
    start_probe(lab, out)
    try:
        rc, output, seconds = playbook(lab, "-e", "kubeadm_renew_force=true")
    finally:
        summary = stop_probe(out)
    assert rc == 0, output[-5000:]
    kinds = summary["kinds"]
    detail = {kind: {k: kinds[kind].get(k) for k in ("ok", "fail", "failovers", "cert_failures", "writes")} for kind in kinds}
    sys.stderr.write("\nrenew_kubeadm.yml (force) %.1f s; probe %s\n" % (seconds, json.dumps(detail)))
    # 0 certificate failures, 0 lost writes; a failed request (a real apiserver answers "503 apiserver is shutting down"
    # to a request that reaches it during its graceful stop) is an availability blip, bounded by the verdict
    for kind in ("old", "current", "etcd"):
        assert kinds[kind]["ok"] > 10, detail
        assert kinds[kind]["cert_failures"] == 0, detail
    assert kinds["etcd"]["writes"]["lost"] == 0, detail
    assert summary["verdict"]["ok"], (summary["verdict"], detail)
    for host in cps:
        report = kubeadm_report(lab, host)
        for item in report["certificates"]:
            if not item["missing"]:
                assert item["residualTime"] > 364 * 86400, (host["name"], item)
        starts = pod_starts(host)
        for pod in STATIC_PODS:
            assert starts[pod] and min(starts[pod]) > started, (host["name"], pod, starts)
        for kubeconfig in ("/etc/kubernetes/admin.conf", "/root/.kube/config"):
            nodes = kubeadm_lab.in_host(host, ["kubectl", "--kubeconfig", kubeconfig, "get", "nodes", "-o", "name"], timeout=30)
            assert nodes.returncode == 0 and nodes.stdout.count("node/") == len(lab["hosts"]), (kubeconfig, nodes.stderr)
    kubeadm_lab.wait_ready(lab, 120)
    STEPS["renewed"] = True


def test_05_rerun_renews_and_restarts_nothing(lab):
    needs("renewed")
    before, starts = all_files(lab), {h["name"]: pod_starts(h) for h in kubeadm_lab.control_planes(lab)}
    rc, output, seconds = playbook(lab)
    assert rc == 0, output[-4000:]
    sys.stderr.write("\nrenew_kubeadm.yml rerun %.1f s\n" % seconds)
    assert all(row["changed"] == 0 for row in recap(output).values()), recap(output)
    assert all_files(lab) == before
    assert {h["name"]: pod_starts(h) for h in kubeadm_lab.control_planes(lab)} == starts


# ----------------------------------------------------------------------------------------------------------------
# service-account key: TokenRequest and TokenReview through the real apiservers, with the admin credential


def api(lab, host, method, path, body):
    """One JSON request to host's apiserver as kubernetes-admin (the credential in host's admin.conf)."""
    user = kubeadm_lab.yaml_user(pki(host, "admin.conf"))
    files = os.path.join(lab["base"], "api-" + host["name"])
    os.makedirs(files, exist_ok=True)
    kubeadm_lab.write_b64(os.path.join(files, "admin.crt"), user["client-certificate-data"])
    kubeadm_lab.write_b64(os.path.join(files, "admin.key"), user["client-key-data"])
    context = ssl.create_default_context(cafile=pki(host, "pki/ca.crt"))
    context.load_cert_chain(os.path.join(files, "admin.crt"), os.path.join(files, "admin.key"))
    request = urllib.request.Request("https://%s:6443%s" % (host["address"], path), method=method,
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return json.loads(response.read())


def request_token(lab, host):
    spec = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    return api(lab, host, "POST", "/api/v1/namespaces/default/serviceaccounts/default/token", spec)["status"]["token"]


def authenticated(lab, host, token):
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    return api(lab, host, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", review)["status"].get("authenticated", False)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_token(key, uid):
    """A bound service-account token for default/default, RS256-signed with ``key`` (what an apiserver holding that key
    would have issued)."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": [ISSUER], "sub": "system:serviceaccount:default:default", "iat": now, "nbf": now,
              "exp": now + 3600, "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "default", "uid": uid}}}
    signing_input = "%s.%s" % (b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()), b64url(json.dumps(claims).encode()))
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


def signed_by(token, public_key):
    head, payload, signature = token.split(".")
    try:
        public_key.verify(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)), ("%s.%s" % (head, payload)).encode(),
                          padding.PKCS1v15(), hashes.SHA256())
        return True
    except Exception:  # pylint: disable=broad-except  # InvalidSignature: not this key
        return False


def live_sa_key(host):
    with open(pki(host, "pki/sa.key"), "rb") as handle:
        return serialization.load_pem_private_key(handle.read(), None)


def test_06_service_account_key_rotation_keeps_old_tokens(lab):
    needs("up")
    cps = kubeadm_lab.control_planes(lab)
    deadline = time.monotonic() + 120
    while True:  # the controller-manager's serviceaccount controller makes default/default
        account = kubeadm_lab.kubectl(cps[0], "-n", "default", "get", "serviceaccount", "default", "-o", "json")
        if account.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert account.returncode == 0, account.stderr
    uid = json.loads(account.stdout)["metadata"]["uid"]
    old_key = live_sa_key(cps[0])
    originals = {}
    for name in ("sa.key", "sa.pub"):
        with open(pki(cps[0], "pki/" + name), "rb") as handle:
            originals[name] = handle.read()
    old_token = request_token(lab, cps[0])
    dropped_token = forged_token(lab["previous_sa_key"], uid)
    assert signed_by(old_token, old_key.public_key())
    for host in cps:  # before: both verify everywhere (the earlier key is trusted: its later failure is the drop)
        assert authenticated(lab, host, old_token) and authenticated(lab, host, dropped_token), host["name"]

    rc, output, seconds = playbook(lab, "-e", "service_key_rotation_keep=1", path=SA_PLAYBOOK)
    assert rc == 0, output[-5000:]
    sys.stderr.write("\nrotate_service_key_kubeadm.yml %.1f s\n" % seconds)
    assert "PRIVATE KEY" not in output and "PUBLIC KEY" not in output and "LS0tLS1CRUdJTi" not in output  # no key, raw or base64

    new_key = live_sa_key(cps[0])
    assert new_key.public_key().public_numbers() != old_key.public_key().public_numbers()
    # the backup holds the files as they were before the rotation (the sign step must not overwrite sa.pub's copy)
    for name, data in originals.items():
        copies = glob.glob(kubeadm_lab.host_path(cps[0], "/var/lib/kubepki/rotate-service-key/backup-*/etc/kubernetes/pki/"
                                                 + name))
        assert len(copies) == 1, (name, copies)
        with open(copies[0], "rb") as handle:
            assert handle.read() == data, "%s: the backup does not hold the file from before the rotation" % name
    for host in cps:
        assert live_sa_key(host).private_numbers() == new_key.private_numbers(), host["name"]
        with open(pki(host, "pki/sa.pub"), "rb") as handle:
            assert handle.read().count(b"BEGIN PUBLIC KEY") == 2, host["name"]  # the new key and the one kept
    new_token = request_token(lab, cps[1])
    assert signed_by(new_token, new_key.public_key()) and not signed_by(new_token, old_key.public_key())
    for host in cps:
        assert authenticated(lab, host, old_token), "%s: a token issued before the rotation no longer verifies" % host["name"]
        assert authenticated(lab, host, new_token), "%s: a token of the new key does not verify" % host["name"]
        assert not authenticated(lab, host, dropped_token), "%s: a token of the dropped key still verifies" % host["name"]
    kubeadm_lab.wait_ready(lab, 120)


# ----------------------------------------------------------------------------------------------------------------
# external CA on the running control plane

EXTERNAL_PLAYBOOK = os.path.join(REPO, "playbooks", "external_ca_kubeadm.yml")
CA_FILES = {"ca": "pki/ca", "front-proxy-ca": "pki/front-proxy-ca", "etcd-ca": "pki/etcd/ca"}


def files_named(root, names):
    return [os.path.join(base, name) for base, _dirs, files in os.walk(root) for name in files if name in names]


def test_07_external_ca_mode_on_the_running_control_plane(lab):
    needs("up")
    cps = kubeadm_lab.control_planes(lab)
    operator = os.path.join(lab["base"], "operator")
    cas = {}
    for name, base in CA_FILES.items():  # the operator's copies of the CAs, on the controller
        os.makedirs(os.path.join(operator, "cas", name))
        for suffix in (".crt", ".key"):
            shutil.copyfile(pki(cps[0], base + suffix), os.path.join(operator, "cas", name, "ca" + suffix))
        cas[name] = {"cert": os.path.join(operator, "cas", name, "ca.crt"), "key": os.path.join(operator, "cas", name, "ca.key")}
    extra = json.dumps({"kubeadm_external_ca_controller_dir": os.path.join(operator, "requests"), "kubeadm_external_ca_cas": cas,
                        "kubeadm_external_ca_validity_days": 200})
    started = time.time()
    rc, output, seconds = playbook(lab, "-e", extra, path=EXTERNAL_PLAYBOOK)
    assert rc == 0, output[-5000:]
    sys.stderr.write("\nexternal_ca_kubeadm.yml %.1f s\n" % seconds)
    for base, _dirs, files in os.walk(os.path.join(operator, "requests")):
        assert not [f for f in files if f.endswith(".key")], "a node's private key reached the controller: %s" % base
    for host in cps:
        report = kubeadm_report(lab, host)
        assert all(ca["externallyManaged"] and not ca["missing"] for ca in report["certificateAuthorities"]), (host["name"], report)
        for item in report["certificates"]:
            if not item["missing"]:
                assert item["externallyManaged"] and 199 * 86400 < item["residualTime"] <= 200 * 86400, (host["name"], item)
        # no CA key on the node, backups included
        leftovers = (files_named(kubeadm_lab.host_path(host, "/etc/kubernetes"), {"ca.key", "front-proxy-ca.key"})
                     + files_named(kubeadm_lab.host_path(host, "/var/lib/kubepki"), {"ca.key", "front-proxy-ca.key"}))
        assert not leftovers, leftovers
        starts = pod_starts(host)
        assert min(starts["kube-apiserver"]) > started and min(starts["kube-controller-manager"]) > started, (host["name"], starts)
    kubeadm_lab.wait_ready(lab, 120)
    # the control plane works on the new credentials: the controller-manager publishes the CA into a new namespace
    created = kubeadm_lab.kubectl(cps[0], "create", "namespace", "kubepki-external-ca")
    assert created.returncode == 0, created.stderr
    deadline = time.monotonic() + 120
    while True:
        published = kubeadm_lab.kubectl(cps[1], "-n", "kubepki-external-ca", "get", "configmap", "kube-root-ca.crt")
        if published.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert published.returncode == 0, published.stderr
    rc, output, _seconds = playbook(lab, "-e", extra, path=EXTERNAL_PLAYBOOK)
    assert rc == 0 and all(row["changed"] == 0 for row in recap(output).values()), recap(output)
