# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A kubeadm node without a machine: a directory that is /etc/kubernetes inside a private mount namespace, written
and judged by the real kubeadm (tests/kube/build.sh), and a kubepki.certs module run by ansible in the same
namespace. Independent of plugins/ (it runs the modules the way a playbook does, through ansible)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
KUBERNETES_DIR = "/etc/kubernetes"
CONFIG_IN_NODE = "/etc/kubernetes/kubeadm-config.yaml"
LEAF_HOURS = 2000  # not kubeadm's default (8760 h): the reported dates must come from the files
CA_HOURS = 30000

CLUSTER_CONFIG = """\
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
certificatesDir: /etc/kubernetes/pki
controlPlaneEndpoint: 10.0.0.1:6443
certificateValidityPeriod: {leaf_hours}h0m0s
caCertificateValidityPeriod: {ca_hours}h0m0s
{etcd}"""
EXTERNAL_ETCD = """\
etcd:
  external:
    endpoints: [https://10.0.0.9:2379]
    caFile: /etc/etcd/ca.crt
    certFile: /etc/etcd/client.crt
    keyFile: /etc/etcd/client.key
"""


def build_kubeadm() -> dict:
    result = subprocess.run(["bash", os.path.join(HERE, "build.sh"), "kubeadm"], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise AssertionError("tests/kube/build.sh kubeadm failed:\n%s" % result.stderr[-3000:])
    path = os.path.join(result.stdout.strip().splitlines()[-1], "kubeadm")
    version = subprocess.run([path, "version", "-o", "short"], capture_output=True, text=True, check=True).stdout
    return {"path": path, "version": version.strip()}


def in_node(node_dir, argv, **kwargs):
    """Run argv in a private mount namespace where node_dir is /etc/kubernetes."""
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$0" /etc/kubernetes && exec "$@"', node_dir]
    return subprocess.run(wrapper + list(argv), capture_output=True, text=True, check=False, **kwargs)


def kubeadm_run(kubeadm, node_dir, *args):
    result = in_node(node_dir, [kubeadm["path"], *args])
    if result.returncode != 0:
        raise AssertionError("kubeadm %s: rc=%d\n%s" % (" ".join(args), result.returncode, result.stderr[-3000:]))
    return result.stdout


def new_node(kubeadm, node_dir, node, address, *, external_etcd=False, kubeconfigs=("all",)):
    """kubeadm init phase certs all + kubeconfig phases in node_dir; returns the node (dir, config in the node)."""
    os.makedirs(node_dir, exist_ok=True)
    with open(os.path.join(node_dir, "kubeadm-config.yaml"), "w", encoding="utf-8") as handle:
        handle.write(CLUSTER_CONFIG.format(node=node, address=address, version=kubeadm["version"],
                                           leaf_hours=LEAF_HOURS, ca_hours=CA_HOURS,
                                           etcd=EXTERNAL_ETCD if external_etcd else ""))
    kubeadm_run(kubeadm, node_dir, "init", "phase", "certs", "all", "--config", CONFIG_IN_NODE)
    for kubeconfig in kubeconfigs:
        kubeadm_run(kubeadm, node_dir, "init", "phase", "kubeconfig", kubeconfig, "--config", CONFIG_IN_NODE)
    return {"dir": node_dir, "config": CONFIG_IN_NODE}


def copy_node(source, target_dir):
    shutil.copytree(source["dir"], target_dir, symlinks=True)
    return {"dir": target_dir, "config": source["config"]}


def kubeadm_report(kubeadm, node):
    return json.loads(kubeadm_run(kubeadm, node["dir"], "certs", "check-expiration", "--config", node["config"],
                                  "-o", "json"))


def run_module(node, work_dir, module, args, *, check=False):
    """A kubepki.certs module run by ansible (ad hoc, local) in the node's namespace, or on the controller (outside
    any node) when node is None: (rc, result)."""
    tree = tempfile.mkdtemp(dir=str(work_dir), prefix="tree-")
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="True", ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree",
               ANSIBLE_CALLBACK_TREE_DIR=tree, ANSIBLE_LOCAL_TEMP=os.path.join(str(work_dir), "ansible-tmp"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="False")
    ansible = shutil.which("ansible")
    if not ansible:
        raise AssertionError("ansible is not on PATH")
    argv = [ansible, "-i", "localhost,", "-c", "local", "localhost", "-m", "kubepki.certs." + module,
            "-a", json.dumps(args), "-e", "ansible_python_interpreter=%s" % sys.executable]
    if check:
        argv.append("--check")
    result = in_node(node["dir"], argv, env=env) if node else subprocess.run(argv, capture_output=True, text=True,
                                                                             check=False, env=env)
    path = os.path.join(tree, "localhost")
    if not os.path.exists(path):
        raise AssertionError("%s left no result: rc=%d\n%s\n%s" % (module, result.returncode, result.stdout[-3000:],
                                                                   result.stderr[-3000:]))
    with open(path, encoding="utf-8") as handle:
        return result.returncode, json.load(handle)


# kubeadm's renewable certificates on disk, relative to /etc/kubernetes, and the CA certificate of each
FILES = {"apiserver": "pki/apiserver", "apiserver-kubelet-client": "pki/apiserver-kubelet-client",
         "front-proxy-client": "pki/front-proxy-client", "etcd-server": "pki/etcd/server", "etcd-peer": "pki/etcd/peer",
         "etcd-healthcheck-client": "pki/etcd/healthcheck-client", "apiserver-etcd-client": "pki/apiserver-etcd-client"}
CA_OF = {"front-proxy-client": "pki/front-proxy-ca.crt", "etcd-server": "pki/etcd/ca.crt", "etcd-peer": "pki/etcd/ca.crt",
         "etcd-healthcheck-client": "pki/etcd/ca.crt", "apiserver-etcd-client": "pki/etcd/ca.crt"}
KUBECONFIGS = ("admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf")


def openssl(*args, data=None):
    result = subprocess.run(["openssl", *args], input=data, capture_output=True, check=False)
    assert result.returncode == 0, "openssl %s: %s" % (" ".join(args), result.stderr.decode()[-2000:])
    return result.stdout.decode()


def certificate_and_key(node, name, tmp_path):
    """PEM files of one entry's certificate and key (extracted from its kubeconfig when embedded)."""
    if name in KUBECONFIGS:
        with open(os.path.join(node["dir"], name), encoding="utf-8") as handle:
            user = yaml.safe_load(handle)["users"][0]["user"]
        cert, key = str(tmp_path / (name + ".crt")), str(tmp_path / (name + ".key"))
        for path, field in ((cert, "client-certificate-data"), (key, "client-key-data")):
            with open(path, "wb") as handle:
                handle.write(base64.b64decode(user[field]))
        return cert, key
    base = os.path.join(node["dir"], FILES[name])
    return base + ".crt", base + ".key"


def profile(cert_path):
    """What kubeadm keeps on renewal, as openssl prints it (serial, dates and key identifiers left out): subject,
    issuer, then each extension with its criticality and value, in a fixed order (Go and we order them differently)."""
    text = openssl("x509", "-in", cert_path, "-noout", "-nameopt", "RFC2253", "-subject", "-issuer", "-ext",
                   "subjectAltName,extendedKeyUsage,keyUsage,basicConstraints")
    blocks = []
    for line in text.splitlines():
        if line.startswith((" ", "\t")) and blocks:
            blocks[-1] += " " + line.strip()
        else:
            blocks.append(line.strip())
    return sorted(blocks)


def public_key(path, *, private):
    return openssl("pkey", "-in", path, "-pubout") if private else openssl("x509", "-in", path, "-noout", "-pubkey")


def snapshot(directory):
    found = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                found[os.path.relpath(os.path.join(root, name), directory)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def run_on_controller(work_dir, module, args):
    return run_module(None, work_dir, module, args)
