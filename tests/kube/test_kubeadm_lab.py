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

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import kubeadm_lab
from kubeadm_node import snapshot
from test_expiry_parity import assert_same

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PROBE = os.path.join(os.path.dirname(HERE), "lab", "probe.py")
PLAYBOOK = os.path.join(REPO, "playbooks", "renew_kubeadm.yml")
STATIC_PODS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
STEPS = {}  # step name -> outcome, so that a later step does not run on a failed earlier one


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("kubeadm-lab"))
    state = kubeadm_lab.up(base, kubeadm_lab.build_binaries(), owner_pid=os.getpid())
    try:
        yield state
    finally:
        kubeadm_lab.kubepki_lab.down(base, log=lambda _msg: None)


def needs(*steps):
    missing = [step for step in steps if not STEPS.get(step)]
    if missing:
        pytest.fail("an earlier step failed: %s" % ", ".join(missing))


def playbook(state, *args, timeout=1500):
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_DEPRECATION_WARNINGS="False", ANSIBLE_RETRY_FILES_ENABLED="False")
    started = time.monotonic()
    result = run([shutil.which("ansible-playbook") or "ansible-playbook", "-i", state["inventory"], PLAYBOOK, *args],
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
                  "--restarts", "3"], timeout=300)
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
    for kind in ("old", "current", "etcd"):
        assert kinds[kind]["ok"] > 10, detail
        assert kinds[kind]["cert_failures"] == 0, detail
    for kind in ("old", "current"):
        assert kinds[kind]["fail"] == 0, detail
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
