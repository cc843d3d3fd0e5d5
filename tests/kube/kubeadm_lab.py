# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kubeadm lab: a running control plane of REAL Kubernetes binaries on lab hosts (tests/lab/kubepki_lab.py,
flavour kubeadm: cp1..cpN and workers in network namespaces, each with its own /etc/kubernetes, /var/lib/kubelet,
/var/lib/etcd and /root/.kube).

How each host is made, with the real kubeadm (tests/kube/build.sh):

- cp1: ``kubeadm init phase certs all``, ``kubeconfig all``, ``etcd local``, ``control-plane all`` from a kubeadm
  config file (InitConfiguration + ClusterConfiguration, no controlPlaneEndpoint: every kubeconfig names its own
  node's apiserver, and clients fail over between the three themselves).
- cp2, cp3: what ``kubeadm join --control-plane`` copies (the CA certificates and keys, sa.key/sa.pub), then the
  same phases make their own leaves; no super-admin.conf (join does not write one). The etcd manifests of all three
  carry a three-member ``initial-cluster`` through kubeadm's ``etcd.local.extraArgs`` (join would add members one
  at a time through the etcd API; a cluster that starts with its three members ends in the same state).
- kubelet.conf: join's kubelet gets its client certificate through TLS bootstrap (a CSR the controller-manager
  signs). The kubelet double has no bootstrap: every node's kubelet.conf is kubeadm's own ``init phase kubeconfig
  kubelet`` output (embedded system:node:<name> certificate from the cluster CA), the worker's from cp1's CA.
- Each host runs the kubelet double (tests/lab/double/kubelet_double.py), which starts the static pods in
  /etc/kubernetes/manifests as host processes of the real binaries and keeps its Node Ready through the real
  apiserver. /root/.kube/config on each control-plane node is a copy of its admin.conf (the operator's copy).

Usage (root)::

    python3 tests/kube/kubeadm_lab.py up --dir /tmp/kubeadm-lab [--control-planes 3] [--workers 1]
    python3 tests/kube/kubeadm_lab.py exec --dir /tmp/kubeadm-lab --host cp1 -- kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes
    python3 tests/kube/kubeadm_lab.py down --dir /tmp/kubeadm-lab
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LAB_DIR = os.path.join(os.path.dirname(HERE), "lab")
sys.path.insert(0, LAB_DIR)

import kubepki_lab  # noqa: E402  pylint: disable=wrong-import-position

KUBELET_DOUBLE = os.path.join(LAB_DIR, "double", "kubelet_double.py")
NAME = "kpkk"
SUBNET = "10.124.0.0/24"
CONFIG_IN_NODE = "/etc/kubernetes/kubeadm-config.yaml"
DOUBLE_STATE = "/var/lib/kubelet/double"
FILE_CHECK_PERIOD = 5.0  # the kubelet's is 20 s; the lab's restarts take one period each
COMPONENTS = ("kubeadm", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")
# What kubeadm join --control-plane copies from the first control-plane node (kubeadm's "certificate keys").
SHARED_FILES = ("pki/ca.crt", "pki/ca.key", "pki/sa.key", "pki/sa.pub", "pki/front-proxy-ca.crt", "pki/front-proxy-ca.key",
                "pki/etcd/ca.crt", "pki/etcd/ca.key")
CONFIG = """\
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: {address}
  bindPort: 6443
nodeRegistration:
  name: {node}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: {version}
clusterName: kubepki-lab
certificatesDir: /etc/kubernetes/pki
etcd:
  local:
    dataDir: /var/lib/etcd
    extraArgs:
      - name: initial-cluster
        value: {initial_cluster}
      - name: initial-cluster-state
        value: new
"""


class KubeadmLabError(Exception):
    pass


def build_binaries() -> str:
    """Every control-plane binary from tests/kube/build.sh, as a bin dir whose names are the manifests' commands."""
    result = subprocess.run(["bash", os.path.join(HERE, "build.sh"), *COMPONENTS], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise KubeadmLabError("tests/kube/build.sh failed:\n%s" % result.stderr[-3000:])
    cache = result.stdout.strip().splitlines()[-1]
    bin_dir = os.path.join(cache, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    for name in COMPONENTS:
        source = [entry for entry in os.listdir(cache) if entry == name or entry.startswith(name + "-v")]
        link = os.path.join(bin_dir, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(cache, sorted(source)[-1]), link)
    return bin_dir


def host_argv(host: dict, argv: list) -> list:
    """argv run on a lab host: in the network, mount and UTS namespaces of its sshd."""
    return ["nsenter", "-t", str(host["pid"]), "-m", "-u", "-n", "--", *argv]


def in_host(host: dict, argv: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(host_argv(host, argv), capture_output=True, text=True, check=False, **kwargs)


def host_path(host: dict, path: str) -> str:
    """Where a host's private path lives on the real root (its bind-mount source)."""
    return host["root"] + "/root" + path


def kubeadm(host: dict, bin_dir: str, *args: str) -> str:
    result = in_host(host, [os.path.join(bin_dir, "kubeadm"), *args])
    if result.returncode != 0:
        raise KubeadmLabError("%s: kubeadm %s: rc=%d\n%s" % (host["name"], " ".join(args), result.returncode, result.stderr[-2000:]))
    return result.stdout


def control_planes(state: dict) -> list:
    return [host for host in state["hosts"] if host["group"] == "servers"]


def workers(state: dict) -> list:
    return [host for host in state["hosts"] if host["group"] == "agents"]


def write_config(host: dict, version: str, initial_cluster: str) -> None:
    path = host_path(host, CONFIG_IN_NODE)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(CONFIG.format(address=host["address"], node=host["name"], version=version, initial_cluster=initial_cluster))


def copy_shared(source: dict, target: dict) -> None:
    for relative in SHARED_FILES:
        destination = host_path(target, "/etc/kubernetes/" + relative)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copy2(host_path(source, "/etc/kubernetes/" + relative), destination)


def make_control_plane(host: dict, bin_dir: str, *, first: bool) -> None:
    phases = [("certs", "all"), ("kubeconfig", "admin"), ("kubeconfig", "kubelet"), ("kubeconfig", "controller-manager"),
              ("kubeconfig", "scheduler")]
    if first:
        phases.append(("kubeconfig", "super-admin"))
    phases += [("etcd", "local"), ("control-plane", "all")]
    for phase in phases:
        kubeadm(host, bin_dir, "init", "phase", *phase, "--config", CONFIG_IN_NODE)
    operator_copy = host_path(host, "/root/.kube/config")
    shutil.copy2(host_path(host, "/etc/kubernetes/admin.conf"), operator_copy)
    os.chmod(operator_copy, 0o600)


def make_worker(host: dict, first_cp: dict, bin_dir: str) -> None:
    """kubelet.conf for the worker, signed by the cluster CA on cp1 (its server is cp1's apiserver)."""
    text = kubeadm(first_cp, bin_dir, "kubeconfig", "user", "--config", CONFIG_IN_NODE, "--client-name",
                   "system:node:" + host["name"], "--org", "system:nodes")
    path = host_path(host, "/etc/kubernetes/kubelet.conf")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
    os.makedirs(host_path(host, "/etc/kubernetes/manifests"), exist_ok=True)


def start_kubelet(host: dict, bin_dir: str, file_check_period: float = FILE_CHECK_PERIOD) -> None:
    argv = host_argv(host, ["/usr/bin/python3", KUBELET_DOUBLE, "run", "--manifests", "/etc/kubernetes/manifests",
                            "--kubeconfig", "/etc/kubernetes/kubelet.conf", "--node-name", host["name"],
                            "--node-ip", host["address"], "--state-dir", DOUBLE_STATE, "--bin-dir", bin_dir,
                            "--file-check-period", str(file_check_period)])
    log_path = os.path.join(host["root"], "kubelet-double.log")
    with open(log_path, "ab") as log:
        # The double outlives this call; the lab's teardown stops every process of the host's namespace.
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                         start_new_session=True, close_fds=True)


def upload_config(host: dict, bin_dir: str, timeout: float) -> None:
    """``kubeadm init phase upload-config all`` once the apiserver answers: the kubeadm-config ConfigMap, and (through
    super-admin.conf, as kubeadm init does when it first needs a client) the kubeadm:cluster-admins binding that makes
    admin.conf an administrator."""
    deadline = time.monotonic() + timeout
    while True:
        result = in_host(host, [os.path.join(bin_dir, "kubeadm"), "init", "phase", "upload-config", "all", "--config", CONFIG_IN_NODE],
                         timeout=120)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise KubeadmLabError("%s: kubeadm init phase upload-config: %s" % (host["name"], result.stderr[-2000:]))
        time.sleep(3)


def kubectl(host: dict, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return in_host(host, ["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "--request-timeout", "5s", *args],
                   timeout=timeout)


def node_conditions(host: dict) -> dict:
    """Node name -> Ready condition status, read with kubectl through host's admin.conf ({} when the API does not answer)."""
    result = kubectl(host, "get", "nodes", "-o", "json")
    if result.returncode != 0:
        return {}
    ready = {}
    for item in json.loads(result.stdout)["items"]:
        for condition in item.get("status", {}).get("conditions", []):
            if condition["type"] == "Ready":
                ready[item["metadata"]["name"]] = condition["status"]
    return ready


def wait_ready(state: dict, timeout: float) -> dict:
    """Wait until every node of the lab is Ready in the real apiserver of every control-plane node."""
    names = sorted(host["name"] for host in state["hosts"])
    deadline = time.monotonic() + timeout
    seen = {}
    while time.monotonic() < deadline:
        seen = {host["name"]: node_conditions(host) for host in control_planes(state)}
        if all(sorted(name for name, status in ready.items() if status == "True") == names for ready in seen.values()):
            return seen
        time.sleep(2)
    raise KubeadmLabError("nodes not Ready after %.0f s: %s" % (timeout, json.dumps(seen)))


def trust_previous_sa_key(host: dict, public_pem: bytes) -> None:
    """Append a public key to sa.pub: the cluster still trusts a key an earlier rotation kept (before the apiserver starts)."""
    path = host_path(host, "/etc/kubernetes/pki/sa.pub")
    with open(path, "rb") as handle:
        if public_pem in handle.read():
            return  # copied from the first node with it already
    with open(path, "ab") as handle:
        handle.write(public_pem)


def up(base: str, bin_dir: str, control_plane_count: int = 3, worker_count: int = 1, timeout: float = 300.0,
       owner_pid: int | None = None, previous_sa_pub: bytes | None = None) -> dict:
    started = time.monotonic()
    state = kubepki_lab.up(base, control_plane_count, worker_count, name=NAME, subnet=SUBNET, flavour="kubeadm",
                           owner_pid=owner_pid)
    try:
        version = subprocess.run([os.path.join(bin_dir, "kubeadm"), "version", "-o", "short"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        cps = control_planes(state)
        initial_cluster = ",".join("%s=https://%s:2380" % (host["name"], host["address"]) for host in cps)
        for index, host in enumerate(cps):
            write_config(host, version, initial_cluster)
            if index:
                copy_shared(cps[0], host)
            make_control_plane(host, bin_dir, first=index == 0)
            if previous_sa_pub:
                trust_previous_sa_key(host, previous_sa_pub)
        for host in workers(state):
            make_worker(host, cps[0], bin_dir)
        for host in state["hosts"]:
            start_kubelet(host, bin_dir)
        upload_config(cps[0], bin_dir, timeout)
        state["kubeadm"] = {"version": version, "bin_dir": bin_dir, "ready": wait_ready(state, timeout)}
        state["timings"]["kubeadm_up_seconds"] = round(time.monotonic() - started, 1)
        kubepki_lab.save_state(state)
    except BaseException:
        kubepki_lab.teardown(state)
        raise
    return state


def yaml_user(path: str) -> dict:
    """The single user of a kubeadm kubeconfig."""
    import yaml  # pylint: disable=import-outside-toplevel
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)["users"][0]["user"]


def write_b64(path: str, data: str) -> None:
    with open(path, "wb") as handle:
        handle.write(base64.b64decode(data))
    os.chmod(path, 0o600)


def rss_per_host(state: dict) -> dict:
    """Resident memory (MiB) of every process in each host's network namespace."""
    rows = {}
    for host in state["hosts"]:
        total = sum(kubepki_lab.pid_rss_kib(pid) or 0 for pid in kubepki_lab.netns_pids(host["netns"]))
        rows[host["name"]] = round(total / 1024.0, 1)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="kubeadm lab of real Kubernetes binaries")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--dir", required=True)
    p_up.add_argument("--control-planes", type=int, default=3)
    p_up.add_argument("--workers", type=int, default=1)
    p_down = sub.add_parser("down")
    p_down.add_argument("--dir", required=True)
    p_exec = sub.add_parser("exec", help="run a command on a lab host (its network, mount and UTS namespaces)")
    p_exec.add_argument("--dir", required=True)
    p_exec.add_argument("--host", required=True)
    p_exec.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "down":
        kubepki_lab.down(args.dir)
        return 0
    if args.command == "exec":
        state = kubepki_lab.load_state(args.dir)
        host = next(h for h in state["hosts"] if h["name"] == args.host)
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        return subprocess.call(host_argv(host, argv))
    state = up(args.dir, build_binaries(), args.control_planes, args.workers)
    print("kubeadm lab up in %.1f s; inventory %s; RSS MiB per host %s"
          % (state["timings"]["kubeadm_up_seconds"], state["inventory"], json.dumps(rss_per_host(state))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
