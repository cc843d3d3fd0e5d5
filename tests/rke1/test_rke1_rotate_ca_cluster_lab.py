# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""``rotate-certs-rke1.yml`` with ``rke1_rotate_rotate_ca`` against a lab whose containers are the real etcd,
kube-apiserver and kube-controller-manager (tests/kube/build.sh), started and restarted by the rke double where rke
starts and restarts its containers, on rke's certificate files (/etc/kubernetes/ssl, rke's flags for them).

What is judged after the CA rotation, by real clients only (kubectl, openssl): the admin kubeconfig kept from before
the rotation is refused; rke's add-on pods were deleted and recreated; a Deployment was rolled; the service-account
token Secret filled by the real controller-manager before the rotation hands out the new kube-ca after it; every
namespace's kube-root-ca.crt holds the new kube-ca; and the run's list of what still holds the old CA names the pod
that nothing restarts. Then a rotation with two faults injected, rke's add-on pod deletion not happening and the
controller-manager's token controller off: the role deletes the pods itself and lists the stale token Secret, which
the module then re-issues (check mode first, and a rerun that changes nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from test_rke1_rotate_playbook_lab import collections_path, playbook
from test_rke_double_lab import DOUBLE, rke1_lab
from rke1_fixtures import openssl_fingerprint

HERE = os.path.dirname(os.path.abspath(__file__))
LAB_NAME, LAB_SUBNET = "krkc", "10.129.0.0/24"
CONTAINERS = "/var/log/kubepki-lab/containers"  # the double's RKE_DOUBLE_CONTAINERS_DIR default
SSL = "/etc/kubernetes/ssl"
WAIT = 180
PORTS = {"etcd": 2379, "kube-apiserver": 6443, "kube-controller-manager": 10257}
HEALTHZ = {"kube-apiserver": "https://127.0.0.1:6443/healthz", "kube-controller-manager": "https://127.0.0.1:10257/healthz"}


def kube_binaries():
    result = subprocess.run(["bash", os.path.join(HERE, "..", "kube", "build.sh"), "etcd", "kube-apiserver",
                             "kube-controller-manager"], capture_output=True, text=True, check=False, timeout=3600)
    assert result.returncode == 0, "tests/kube/build.sh failed:\n%s" % result.stderr[-3000:]
    cache = result.stdout.strip().splitlines()[-1]
    etcd = sorted(entry for entry in os.listdir(cache) if entry.startswith("etcd-v"))[-1]
    return {"etcd": os.path.join(cache, etcd), "kube-apiserver": os.path.join(cache, "kube-apiserver"),
            "kube-controller-manager": os.path.join(cache, "kube-controller-manager")}


def hook(name, argv, port, healthz=None):
    """A lab container: the double runs it with start or restart. It stops the running process (TERM, then KILL) and
    waits until its port is free (a killed Go process holds its sockets until its last thread has exited), starts the
    new one and, like rke's health check of a restarted control-plane container, waits until ``healthz`` answers.
    Every wait is bounded."""
    pidfile, logfile = "%s/%s.pid" % (CONTAINERS, name), "%s/%s.log" % (CONTAINERS, name)
    wait = ["i=0; until curl -skf --max-time 2 %s >/dev/null 2>&1 || [ $i -ge 80 ]; do sleep 0.5; i=$((i+1)); done" % healthz] if healthz else []
    return "\n".join([
        "#!/bin/sh",
        "listening() { ss -Hltn 'sport = :%d' | grep -q .; }" % port,
        "if [ -f %s ]; then" % pidfile,
        "  pid=$(cat %s); kill $pid 2>/dev/null; i=0" % pidfile,
        "  while [ -e /proc/$pid ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done",
        "  kill -9 $pid 2>/dev/null",
        "fi",
        "i=0; while listening && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done",
        "setsid %s >>%s 2>&1 </dev/null &" % (" ".join(argv), logfile),
        "echo $! > %s" % pidfile] + wait + [""])


def container_commands(binaries, address, etcd_address):
    dashed = address.replace(".", "-")
    etcd = [binaries["etcd"], "--name", "lab", "--data-dir", "/var/lib/etcd/rke1-lab",
            "--listen-client-urls", "https://0.0.0.0:2379", "--advertise-client-urls", "https://%s:2379" % address,
            "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "lab=http://127.0.0.1:2380", "--client-cert-auth", "--trusted-ca-file", SSL + "/kube-ca.pem",
            "--cert-file", "%s/kube-etcd-%s.pem" % (SSL, dashed), "--key-file", "%s/kube-etcd-%s-key.pem" % (SSL, dashed)]
    apiserver = [binaries["kube-apiserver"], "--etcd-servers", "https://%s:2379" % etcd_address,
                 "--etcd-cafile", SSL + "/kube-ca.pem", "--etcd-certfile", SSL + "/kube-node.pem",
                 "--etcd-keyfile", SSL + "/kube-node-key.pem", "--bind-address", "0.0.0.0", "--secure-port", "6443",
                 "--advertise-address", address, "--tls-cert-file", SSL + "/kube-apiserver.pem",
                 "--tls-private-key-file", SSL + "/kube-apiserver-key.pem", "--client-ca-file", SSL + "/kube-ca.pem",
                 "--service-account-key-file", SSL + "/kube-service-account-token-key.pem",
                 "--service-account-signing-key-file", SSL + "/kube-service-account-token-key.pem",
                 "--service-account-issuer", "rke", "--authorization-mode", "Node,RBAC",
                 "--service-cluster-ip-range", "10.43.0.0/16", "--allow-privileged=true"]
    controller_manager = [binaries["kube-controller-manager"], "--kubeconfig", SSL + "/kubecfg-kube-controller-manager.yaml",
                          "--root-ca-file", SSL + "/kube-ca.pem",
                          "--service-account-private-key-file", SSL + "/kube-service-account-token-key.pem",
                          "--leader-elect=false", "--use-service-account-credentials=true", "--bind-address", "127.0.0.1"]
    return {"etcd": etcd, "kube-apiserver": apiserver, "kube-controller-manager": controller_manager}


def kubectl(lab, *args, kubeconfig=None, check=True):
    result = subprocess.run([shutil.which("kubectl"), "--kubeconfig", kubeconfig or lab["kubeconfig"], "--request-timeout", "10s", *args],
                            capture_output=True, text=True, check=False, timeout=60)
    if check:
        assert result.returncode == 0, "kubectl %s: %s" % (" ".join(args), result.stderr[-2000:])
    return result


def wait_for(what, probe, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out after %ds waiting for %s" % (timeout, what)
        time.sleep(2)


def json_of(lab, *args):
    return json.loads(kubectl(lab, "get", *args, "-o", "json").stdout)


MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 1
  strategy: {type: Recreate}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: registry.invalid/web:1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: shop}
spec: {containers: [{name: tool, image: registry.invalid/tool:1}]}
---
apiVersion: v1
kind: Secret
metadata:
  name: legacy-token
  namespace: shop
  annotations: {kubernetes.io/service-account.name: default}
type: kubernetes.io/service-account-token
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: kube-dns, namespace: kube-system}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec: {containers: [{name: dns, image: registry.invalid/dns:1}]}
"""


def secret_ca(lab, tmp_path):
    data = json_of(lab, "secret", "legacy-token", "--namespace", "shop").get("data") or {}
    if "ca.crt" not in data:
        return None
    path = str(tmp_path / "secret-ca.crt")
    subprocess.run(["sh", "-c", "base64 -d > %s" % path], input=data["ca.crt"], text=True, check=True)
    return openssl_fingerprint(path)


def root_ca_configmap(lab, tmp_path, namespace):
    result = kubectl(lab, "get", "configmap", "kube-root-ca.crt", "--namespace", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return None  # not published yet
    data = json.loads(result.stdout).get("data") or {}
    path = str(tmp_path / ("root-ca-%s.crt" % namespace))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(data.get("ca.crt", ""))
    return openssl_fingerprint(path)


def state_ca_fingerprint(lab, tmp_path):
    with open(lab["rkestate"], encoding="utf-8") as handle:
        pem = json.load(handle)["currentState"]["certificatesBundle"]["kube-ca"]["certificatePEM"]
    path = str(tmp_path / "state-kube-ca.pem")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(pem)
    return openssl_fingerprint(path)


def pods(lab, namespace, selector):
    return json_of(lab, "pods", "--namespace", namespace, "-l", selector)["items"]


def api_ready(lab):
    return kubectl(lab, "get", "--raw", "/readyz", check=False).returncode == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    binaries = kube_binaries()
    saved = {key: os.environ.get(key) for key in ("RKE_DOUBLE_KUBECTL", "RKE_DOUBLE_SKIP_CLUSTER_PODS", "KUBECACHEDIR")}
    os.environ["RKE_DOUBLE_KUBECTL"] = shutil.which("kubectl")
    # kubectl's discovery cache (default ~/.kube/cache) goes to a temporary directory: /root/.kube is a mount point
    # the lab harness makes and removes, and a cache left in it is a leftover of the machine's other labs.
    os.environ["KUBECACHEDIR"] = str(tmp_path_factory.mktemp("kubectl-cache"))
    with rke1_lab("krkc-", LAB_NAME, LAB_SUBNET) as made:
        hosts = made["hosts"]
        etcd_address = hosts["server1"]["address"]
        runs = {"server1": ("etcd", "kube-apiserver", "kube-controller-manager"), "server2": ("kube-apiserver",)}
        for name, containers in runs.items():
            directory = os.path.join(hosts[name]["root"], "root", CONTAINERS.lstrip("/"))
            os.makedirs(directory, exist_ok=True)
            commands = container_commands(binaries, hosts[name]["address"], etcd_address)
            for container in containers:
                path = os.path.join(directory, container)
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(hook(container, commands[container], PORTS[container], HEALTHZ.get(container)))
                os.chmod(path, 0o755)
        lab = dict(made, kubeconfig=os.path.join(made["workstation"], "kube_config_cluster.yml"),
                   backups=os.path.join(made["workstation"], "backups"), log_dir=made["base"], runs=0)
        try:
            env = dict(os.environ, KUBEPKI_RKE1_GENERATOR=made["generator"])
            result = subprocess.run([sys.executable, DOUBLE, "up", "--config", made["config"]], capture_output=True, text=True,
                                    check=False, env=env, cwd=made["workstation"], timeout=300)
            assert result.returncode == 0, result.stderr
            wait_for("the API server", lambda: api_ready(lab))
            wait_for("the default service account", lambda: kubectl(lab, "get", "serviceaccount", "default", check=False).returncode == 0)
            manifests = os.path.join(made["workstation"], "objects.yaml")
            with open(manifests, "w", encoding="utf-8") as handle:
                handle.write(MANIFESTS)
            wait_for("the objects", lambda: kubectl(lab, "apply", "-f", manifests, check=False).returncode == 0)
            yield lab
        finally:
            for name in runs:
                directory = os.path.join(hosts[name]["root"], "root", CONTAINERS.lstrip("/"))
                shutil.copytree(directory, str(tmp_path_factory.getbasetemp() / ("containers-" + name)), dirs_exist_ok=True)
                for entry in os.listdir(directory):
                    if entry.endswith(".pid"):
                        with open(os.path.join(directory, entry), encoding="utf-8") as handle:
                            try:
                                os.kill(int(handle.read().strip()), 9)
                            except (ProcessLookupError, ValueError):
                                pass
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def ansible_module(lab, args, *options):
    """kubepki.certs.rke1_old_ca run alone on the workstation (ansible ad hoc); (rc, its JSON result)."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_CONFIG", None)
    ansible = shutil.which("ansible") or os.path.join(os.path.dirname(sys.executable), "ansible")
    result = subprocess.run([ansible, "localhost", "-c", "local", "-m", "kubepki.certs.rke1_old_ca", "-a", json.dumps(args), *options],
                            capture_output=True, text=True, check=False, timeout=300, env=env)
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    assert "localhost | " in result.stdout, result.stdout + result.stderr  # ad hoc: "localhost | CHANGED => {...}"
    return result.returncode, json.loads(result.stdout[result.stdout.index("{"):])


def test_01_rotate_ca_then_restart_and_list_what_holds_the_old_ca(lab, tmp_path):
    old_ca = state_ca_fingerprint(lab, tmp_path)
    # Before: the real controller-manager filled the token Secret and published kube-root-ca.crt with the CA.
    assert wait_for("the token Secret's ca.crt", lambda: secret_ca(lab, tmp_path)) == old_ca
    assert wait_for("kube-root-ca.crt in shop", lambda: root_ca_configmap(lab, tmp_path, "shop")) == old_ca
    dns_before = wait_for("the kube-dns pod", lambda: pods(lab, "kube-system", "k8s-app=kube-dns"))
    wait_for("the web pod", lambda: pods(lab, "shop", "app=web"))
    old_kubeconfig = str(tmp_path / "old_kube_config.yml")
    shutil.copy(lab["kubeconfig"], old_kubeconfig)
    assert kubectl(lab, "get", "namespaces", kubeconfig=old_kubeconfig).returncode == 0

    rc, output = playbook(lab, "rotate-certs-rke1.yml", "-e", json.dumps({
        "rke1_rotate_rotate_ca": True, "rke1_rotate_restart_workloads": True, "rke1_rotate_api_timeout": WAIT}))
    assert rc == 0, output[-5000:]
    new_ca = state_ca_fingerprint(lab, tmp_path)
    assert new_ca != old_ca

    # A client holding only the old CA is refused (kubectl's own TLS verification).
    refused = kubectl(lab, "get", "namespaces", kubeconfig=old_kubeconfig, check=False)
    assert refused.returncode != 0 and ("x509" in refused.stderr or "certificate" in refused.stderr), refused.stderr
    # kube-root-ca.crt holds the new CA; so does the token Secret, although nothing re-issued it here: the real
    # controller-manager rewrites a token Secret's ca.crt when it starts with another --root-ca-file.
    assert root_ca_configmap(lab, tmp_path, "shop") == new_ca
    assert wait_for("the token Secret's new ca.crt", lambda: secret_ca(lab, tmp_path) == new_ca)
    assert "token Secrets re-issued: none (rke1_rotate_reissue_token_secrets is false)" in output, output[-5000:]
    # rke (the double, by label) deleted its add-on pod; the ReplicaSet made a new one.
    old_uids = {pod["metadata"]["uid"] for pod in dns_before}
    assert wait_for("a new kube-dns pod", lambda: [p for p in pods(lab, "kube-system", "k8s-app=kube-dns") if p["metadata"]["uid"] not in old_uids])
    assert "rke add-on pods restarted here (rke had not): none" in output, output[-5000:]
    # The Deployment was rolled: its template carries the rotation's annotation.
    template = json_of(lab, "deployment", "web", "--namespace", "shop")["spec"]["template"]["metadata"]
    marker = template.get("annotations", {}).get("kubepki.io/ca-rotation")
    assert marker and marker == new_ca.replace(":", "")[:16].lower(), template
    assert "Deployment shop/web" in output
    # What is left: the bare pod nothing restarts, named with the reason.
    assert "Pod shop/tool started before the CA rotation and may hold the old kube-ca, no owner" in output, output[-5000:]
    assert "every kubeconfig made from the previous kube_config_cluster.yml" in output


def disable_token_controller(lab):
    """A fault: the controller-manager runs without the service-account key, so its token controller does not start
    and nothing rewrites token Secrets after the next CA rotation."""
    path = os.path.join(lab["hosts"]["server1"]["root"], "root", CONTAINERS.lstrip("/"), "kube-controller-manager")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.replace(" --service-account-private-key-file %s/kube-service-account-token-key.pem" % SSL, ""))


def test_02_add_on_pods_rke_left_are_restarted_and_stale_token_secrets_listed(lab, tmp_path):
    dns_before = wait_for("the kube-dns pod", lambda: pods(lab, "kube-system", "k8s-app=kube-dns"))
    disable_token_controller(lab)
    os.environ["RKE_DOUBLE_SKIP_CLUSTER_PODS"] = "1"
    try:
        rc, output = playbook(lab, "rotate-certs-rke1.yml", "-e", json.dumps({"rke1_rotate_rotate_ca": True, "rke1_rotate_api_timeout": WAIT}))
    finally:
        os.environ.pop("RKE_DOUBLE_SKIP_CLUSTER_PODS")
    assert rc == 0, output[-5000:]
    names = sorted(pod["metadata"]["name"] for pod in dns_before)
    assert "rke add-on pods restarted here (rke had not): %s" % ", ".join("kube-system/" + name for name in names) in output, output[-5000:]
    old_uids = {pod["metadata"]["uid"] for pod in dns_before}
    assert wait_for("a new kube-dns pod", lambda: [p for p in pods(lab, "kube-system", "k8s-app=kube-dns") if p["metadata"]["uid"] not in old_uids])
    assert "workloads rolled: none (rke1_rotate_restart_workloads is false)" in output
    assert "Secret shop/legacy-token (service-account token) hands out a ca.crt without the new kube-ca" in output, output[-5000:]
    assert secret_ca(lab, tmp_path) != state_ca_fingerprint(lab, tmp_path)


def test_03_token_secrets_reissued_by_the_module_check_mode_and_rerun(lab, tmp_path):
    new_ca = state_ca_fingerprint(lab, tmp_path)
    stale = secret_ca(lab, tmp_path)
    assert stale != new_ca
    args = {"rkestate": lab["rkestate"], "kubeconfig": lab["kubeconfig"], "rotated_at": "2000-01-01T00:00:00Z",
            "restart_system_pods": False, "reissue_token_secrets": True, "namespaces": ["shop"]}
    rc, result = ansible_module(lab, args, "--check")
    assert rc == 0 and result["changed"] and result["reissued_token_secrets"] == ["shop/legacy-token"], result
    assert secret_ca(lab, tmp_path) == stale  # check mode changed nothing
    rc, result = ansible_module(lab, args)
    assert rc == 0 and result["changed"] and result["reissued_token_secrets"] == ["shop/legacy-token"], result
    assert secret_ca(lab, tmp_path) == new_ca  # openssl: the Secret's ca.crt is the state's new kube-ca
    assert not [holder for holder in result["old_ca_holders"] if holder["kind"] == "Secret"], result["old_ca_holders"]
    rc, result = ansible_module(lab, args)
    assert rc == 0 and not result["changed"] and result["reissued_token_secrets"] == [], result
