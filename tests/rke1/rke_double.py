# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test double of the ``rke`` CLI (RKE1): ``rke --version``, ``rke up``, ``rke cert rotate``, ``rke cert generate-csr``.

The PKI work is rke's own Go code: the generator of tests/rke1/gen (``rke1-fixtures``, rke v1.8.0's ``cmd``,
``cluster`` and ``pki`` packages) writes cluster.rkestate and each node's certificate files into a private staging
directory. This wrapper does what rke does around that with SSH and Docker, over real ssh/scp to the nodes of
cluster.yml (address, port, user, ssh_key_path; rke ignores host keys, so does this):

- copies each node's files into /etc/kubernetes/ssl (what rke-tools' cert-deployer container writes there);
- writes kube_config_cluster.yml next to cluster.yml (the kube-admin kubeconfig of the state file, as rke does);
- "restarts containers" in rke's order (cmd/cert.go rebuildClusterWithRotatedCertificates): etcd plane (only when
  every service, --rotate-ca or etcd is rotated), control plane, worker plane on every host; ``up`` starts them in
  the same order. Each one is a line ``<sequence> <plane> <action> <container>`` appended to RESTART_LOG on the node;
  the sequence numbers run across all nodes of one invocation, so a test merges the logs to see the global order.
  Where the lab runs a real process for a container, an executable CONTAINERS_DIR/<container> on the node is run
  with the action (``start`` or ``restart``);
- after ``--rotate-ca``, deletes the pods of rke's add-ons by label through the admin kubeconfig when the lab runs a
  Kubernetes API (RKE_DOUBLE_KUBECTL; RKE_DOUBLE_SKIP_CLUSTER_PODS=1 leaves them, a fault a test injects).

``rke cert generate-csr [--config F] [--cert-dir DIR]`` is the generator's ``csr`` (rke's cmd.GenerateRKECSRs, which
contacts no node): ``<name>-csr.pem`` + ``<name>-key.pem`` in DIR, by default rke's ``<cluster file stem>_certs``.

Run it as ``python3 tests/rke1/rke_double.py <rke arguments>`` (no shebang: ansible-test's sanity rules for tests/).
Failures print rke's fatal log line (logrus: ``level=fatal msg="..."``) and exit 1, like rke's main. Nothing here
imports the collection's plugins. Environment: KUBEPKI_RKE1_GENERATOR (the generator binary; default: built or
found by tests/rke1/build.sh), RKE_CONFIG (default of --config, as rke), RKE_DOUBLE_RESTART_LOG (path on the nodes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
RKE_VERSION = "v1.8.0"  # the version tests/rke1/gen/go.mod pins
SSL_DIR = "/etc/kubernetes/ssl"
RESTART_LOG = os.environ.get("RKE_DOUBLE_RESTART_LOG", "/var/log/kubepki-lab/rke-restarts.log")
SSH_TIMEOUT = 60
# rke's planes and their containers (services/{etcd,controlplane,workerplane}.go). nginx-proxy only runs on hosts
# without the controlplane role; rke's restart of a missing container is a no-op (docker.DoRestartContainer).
ETCD_CONTAINERS = ("etcd",)
CONTROL_CONTAINERS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
WORKER_CONTAINERS = ("kubelet", "kube-proxy", "nginx-proxy")
# A lab that runs real processes for some containers puts an executable per container name here on the node; the
# double runs it with the action (start/restart) where rke would start or restart that container.
CONTAINERS_DIR = os.environ.get("RKE_DOUBLE_CONTAINERS_DIR", "/var/log/kubepki-lab/containers")
# rke v1.8.0 cluster.RestartClusterPods: k8s-app flannel, canal, calico-node, calico-kube-controllers, metrics-server,
# kube-dns, kube-dns-autoscaler, coredns-autoscaler; name weave-net; app ingress-nginx, kube-api-auth,
# cattle-cluster-agent.
SYSTEM_POD_LABELS = ("k8s-app=flannel", "k8s-app=canal", "name=weave-net", "app=ingress-nginx", "k8s-app=metrics-server",
                     "k8s-app=kube-dns", "k8s-app=kube-dns-autoscaler", "k8s-app=coredns-autoscaler", "app=kube-api-auth",
                     "app=cattle-cluster-agent", "k8s-app=calico-node", "k8s-app=calico-kube-controllers")


class RkeError(Exception):
    """A failure rke reports with its fatal log line."""


def log(level: str, message: str) -> None:
    """One logrus text-formatter line on stderr, as rke prints without a terminal."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sys.stderr.write('time="%s" level=%s msg=%s\n' % (stamp, level, json.dumps(message)))
    sys.stderr.flush()


def generator_path() -> str:
    configured = os.environ.get("KUBEPKI_RKE1_GENERATOR")
    if configured:
        return configured
    result = subprocess.run(["bash", os.path.join(HERE, "build.sh")], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RkeError("tests/rke1/build.sh failed: %s" % result.stderr.strip()[-2000:])
    return result.stdout.strip().splitlines()[-1]


def run_generator(*args: str) -> None:
    """The generator's logrus lines go to our stderr; its error ("rke1-fixtures: <rke's error>") becomes ours."""
    result = subprocess.run([generator_path(), *args], capture_output=True, text=True, check=False)
    lines = result.stderr.splitlines()
    prefix = "rke1-fixtures: "
    for line in lines:
        if not line.startswith(prefix):
            sys.stderr.write(line + "\n")
    if result.returncode != 0:
        errors = [line[len(prefix):] for line in lines if line.startswith(prefix)]
        raise RkeError(errors[-1] if errors else "generator failed (rc=%d)" % result.returncode)


def read_cluster(config: str) -> dict:
    try:
        with open(config, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise RkeError("Failed to resolve cluster file: can not find cluster configuration file: %s" % exc) from exc
    except yaml.YAMLError as exc:
        raise RkeError("Failed to parse cluster file: %s" % exc) from exc
    if not document.get("nodes"):
        raise RkeError("Failed to parse cluster file: Cluster must have at least one node")
    return document


def node_ssh(document: dict, node: dict) -> tuple:
    """(ssh options, user@address) of a node; cluster-level ssh_key_path and rke's defaults fill the gaps."""
    key = os.path.expanduser(node.get("ssh_key_path") or document.get("ssh_key_path") or "~/.ssh/id_rsa")
    options = ["-i", key, "-p", str(node.get("port") or 22), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
    return options, "%s@%s" % (node.get("user") or "", node["address"])


def ssh(document: dict, node: dict, command: str) -> None:
    options, target = node_ssh(document, node)
    result = subprocess.run(["ssh", *options, target, command], capture_output=True, text=True, check=False,
                            timeout=SSH_TIMEOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RkeError("Failed to set up SSH tunneling for host [%s]: %s" % (node["address"], result.stderr.strip()))


def deploy_node_files(document: dict, node: dict, staged: str) -> None:
    """cert-deployer's result: every file of the node's bundle in /etc/kubernetes/ssl (mode kept, 0600)."""
    source = os.path.join(staged, node["address"], SSL_DIR.lstrip("/"))
    names = sorted(os.listdir(source))
    ssh(document, node, "mkdir -p %s" % SSL_DIR)
    options, target = node_ssh(document, node)
    scp_options = [("-P" if option == "-p" else option) for option in options]
    result = subprocess.run(["scp", "-q", "-p", *scp_options, *[os.path.join(source, name) for name in names],
                             "%s:%s/" % (target, SSL_DIR)], capture_output=True, text=True, check=False,
                            timeout=SSH_TIMEOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RkeError("[certificates] Failed to deploy certificates on host [%s]: %s" % (node["address"], result.stderr.strip()))
    log("info", "[certificates] Successfully deployed kubernetes certificates to Cluster nodes (%s)" % node["address"])


def has_role(node: dict, role: str) -> bool:
    return role in (node.get("role") or [])


def plane_actions(document: dict, action: str, rotation: tuple | None) -> list:
    """[(node, plane, container)] in rke's order. ``rotation`` is (services, rotate_ca) for cert rotate, None for up."""
    nodes = document["nodes"]
    etcd = [n for n in nodes if has_role(n, "etcd")]
    control = [n for n in nodes if has_role(n, "controlplane")]
    worker = [n for n in nodes if has_role(n, "worker")]
    unique = []
    for node in etcd + control + worker:  # hosts.GetUniqueHostList(etcd, control, worker)
        if all(node["address"] != seen["address"] for seen in unique):
            unique.append(node)
    steps = []
    services, rotate_ca = rotation if rotation is not None else ((), False)
    if rotation is None or not services or rotate_ca or "etcd" in services:
        steps += [(node, "etcd", name) for node in etcd for name in ETCD_CONTAINERS]
    steps += [(node, "controlplane", name) for node in control for name in CONTROL_CONTAINERS]
    for node in unique:
        names = WORKER_CONTAINERS if not has_role(node, "controlplane") else WORKER_CONTAINERS[:2]
        steps += [(node, "worker", name) for name in names]
    return [(node, plane, action, name) for node, plane, name in steps]


def restart_planes(document: dict, steps: list) -> None:
    for sequence, (node, plane, action, name) in enumerate(steps, start=1):
        line = "%d %s %s %s" % (sequence, plane, action, name)
        hook = shlex.quote(os.path.join(CONTAINERS_DIR, name))
        command = "mkdir -p %s && echo %s >> %s && if [ -x %s ]; then %s %s; fi" % (
            shlex.quote(os.path.dirname(RESTART_LOG)), shlex.quote(line), shlex.quote(RESTART_LOG), hook, hook, action)
        ssh(document, node, command)
    log("info", "Finished restarting containers (%d)" % len(steps))


def restart_cluster_pods(config: str) -> None:
    """rke's cluster.RestartClusterPods after --rotate-ca: delete the pods of rke's add-ons, by label, through the
    admin kubeconfig. Only where the lab runs a Kubernetes API (RKE_DOUBLE_KUBECTL names kubectl); rke returns the
    error when the API does not answer, and so does this."""
    kubectl = os.environ.get("RKE_DOUBLE_KUBECTL")
    if not kubectl or os.environ.get("RKE_DOUBLE_SKIP_CLUSTER_PODS") == "1":
        return
    log("info", "Restarting network, ingress, and metrics pods")
    kubeconfig = os.path.join(os.path.dirname(config), "kube_config_" + os.path.basename(config))
    deadline = time.monotonic() + 120
    for label in SYSTEM_POD_LABELS:
        while True:
            result = subprocess.run([kubectl, "--kubeconfig", kubeconfig, "--request-timeout", "10s", "delete", "pods",
                                     "--all-namespaces", "-l", label, "--wait=false"], capture_output=True, text=True,
                                    check=False, timeout=60)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RkeError("Failed to initialize new kubernetes client: %s" % result.stderr.strip())
            time.sleep(2)


def write_kubeconfig(config: str, state_file: str) -> None:
    """kube_config_<cluster file name> next to cluster.yml: the kube-admin kubeconfig rke keeps in the state (0600)."""
    with open(state_file, encoding="utf-8") as handle:
        state = json.load(handle)
    text = state["desiredState"]["certificatesBundle"]["kube-admin"]["config"]
    base = os.path.basename(config)
    path = os.path.join(os.path.dirname(config), "kube_config_" + base)
    temporary = path + ".tmp"
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
    log("info", "Finished building Kubernetes cluster successfully")


def state_path(config: str) -> str:
    return os.path.splitext(config)[0] + ".rkestate"


def command_up(config: str) -> None:
    document = read_cluster(config)
    if os.path.exists(state_path(config)):
        # The generator's "up" starts a new cluster (it removes an old state); rke up would reuse the state.
        raise RkeError("rke double: `rke up` on a cluster with a state file is not modelled (only a fresh cluster)")
    with tempfile.TemporaryDirectory(prefix="rke-double-") as staged:
        run_generator("up", "-config", config, "-nodes", staged)
        for node in document["nodes"]:
            deploy_node_files(document, node, staged)
    restart_planes(document, plane_actions(document, "start", None))
    write_kubeconfig(config, state_path(config))


def command_rotate(config: str, services: list, rotate_ca: bool) -> None:
    document = read_cluster(config)
    args = ["rotate", "-config", config]
    for service in services:
        args += ["-service", service]
    if rotate_ca:
        args.append("-rotate-ca")
    with tempfile.TemporaryDirectory(prefix="rke-double-") as staged:
        run_generator(*args, "-nodes", staged)
        for node in document["nodes"]:
            deploy_node_files(document, node, staged)
    restart_planes(document, plane_actions(document, "restart", (tuple(services), rotate_ca)))
    write_kubeconfig(config, state_path(config))
    if rotate_ca:
        restart_cluster_pods(config)


def command_generate_csr(config: str, cert_dir: str | None) -> None:
    """rke's own generate-csr; its logrus lines pass through, its error becomes our fatal line."""
    read_cluster(config)
    run_generator("csr", "-config", config, *(["-cert-dir", cert_dir] if cert_dir else []))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="rke", add_help=True)
    top.add_argument("--version", "-v", action="store_true")
    top.add_argument("--debug", "-d", action="store_true")
    top.add_argument("--quiet", "-q", action="store_true")
    commands = top.add_subparsers(dest="command")
    up = commands.add_parser("up")
    up.add_argument("--config", default=os.environ.get("RKE_CONFIG", "cluster.yml"))
    cert = commands.add_parser("cert").add_subparsers(dest="cert_command")
    rotate = cert.add_parser("rotate")
    rotate.add_argument("--config", default=os.environ.get("RKE_CONFIG", "cluster.yml"))
    rotate.add_argument("--service", action="append", default=[])
    rotate.add_argument("--rotate-ca", action="store_true")
    generate_csr = cert.add_parser("generate-csr")
    generate_csr.add_argument("--config", default=os.environ.get("RKE_CONFIG", "cluster.yml"))
    generate_csr.add_argument("--cert-dir", default="")
    return top


def main(argv: list | None = None) -> int:
    args = parser().parse_args(argv)
    if args.version:
        print("rke version %s" % RKE_VERSION)
        return 0
    log("info", "Running RKE version: %s" % RKE_VERSION)
    try:
        if args.command == "up":
            command_up(os.path.abspath(args.config))
        elif args.command == "cert" and args.cert_command == "rotate":
            command_rotate(os.path.abspath(args.config), args.service, args.rotate_ca)
        elif args.command == "cert" and args.cert_command == "generate-csr":
            # rke keeps --config as given, so its default directory is relative to the same place
            command_generate_csr(args.config, args.cert_dir or None)
        else:
            parser().print_help(sys.stderr)
            return 2
    except (RkeError, subprocess.TimeoutExpired) as exc:
        log("fatal", str(exc))
        return 1
    return 0


if __name__ == "__main__":
    if shutil.which("ssh") is None:
        log("fatal", "ssh is not on PATH (Debian package openssh-client)")
        sys.exit(1)
    sys.exit(main())
