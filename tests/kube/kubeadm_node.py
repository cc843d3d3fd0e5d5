# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A kubeadm node without a machine: a directory that is /etc/kubernetes inside a private mount namespace, written
and judged by the real kubeadm (tests/kube/build.sh), and a kubepki.certs module run by ansible in the same
namespace. Independent of plugins/ (it runs the modules the way a playbook does, through ansible)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

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
    """A kubepki.certs module run by ansible (ad hoc, local) in the node's namespace: (rc, result)."""
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
    result = in_node(node["dir"], argv, env=env)
    path = os.path.join(tree, "localhost")
    if not os.path.exists(path):
        raise AssertionError("%s left no result: rc=%d\n%s\n%s" % (module, result.returncode, result.stdout[-3000:],
                                                                   result.stderr[-3000:]))
    with open(path, encoding="utf-8") as handle:
        return result.returncode, json.load(handle)
