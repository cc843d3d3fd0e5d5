# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""cert_check on a kubeadm node against the real ``kubeadm certs check-expiration -o json`` on the same node.

The verdict is kubeadm's (built from k8s.io/kubernetes by tests/kube/build.sh): every node's PKI is written by the
real ``kubeadm init phase certs|kubeconfig`` (and ``kubeadm certs renew``) in a private mount namespace whose
/etc/kubernetes is the node's own directory; then kubeadm and the cert_check module (run by ansible, in the same
namespace, with the default layout) report on it, and their CertificateExpirationInfo objects must agree on every
certificate and CA: name, expiration to the second, CA name, externally managed, missing.

Nodes: the init node (super-admin.conf, one certificate renewed later so dates differ), a second control-plane node
made the way ``kubeadm join --control-plane`` makes it (shared CAs, its own leaves, no super-admin.conf), the init
node in external CA mode (CA keys removed), one with a leaf removed, and one with an external etcd.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
KUBERNETES_DIR = "/etc/kubernetes"
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
COMPARED = ("name", "expirationDate", "caName", "externallyManaged", "missing")


@pytest.fixture(scope="module")
def kubeadm():
    result = subprocess.run(["bash", os.path.join(HERE, "build.sh"), "kubeadm"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, "tests/kube/build.sh kubeadm failed:\n%s" % result.stderr[-3000:]
    path = os.path.join(result.stdout.strip().splitlines()[-1], "kubeadm")
    version = subprocess.run([path, "version", "-o", "short"], capture_output=True, text=True, check=True).stdout
    return {"path": path, "version": version.strip()}


@pytest.fixture(scope="module")
def mount_point():
    """/etc/kubernetes must exist as a mount point; created here when missing and removed again (it stays empty:
    every node binds its own directory over it, in its own mount namespace)."""
    created = not os.path.isdir(KUBERNETES_DIR)
    if created:
        os.makedirs(KUBERNETES_DIR)
    try:
        yield KUBERNETES_DIR
    finally:
        if created:
            os.rmdir(KUBERNETES_DIR)


def in_node(node_dir, argv, **kwargs):
    """Run argv in a private mount namespace where node_dir is /etc/kubernetes."""
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$0" /etc/kubernetes && exec "$@"', node_dir]
    return subprocess.run(wrapper + list(argv), capture_output=True, text=True, check=False, **kwargs)


def kubeadm_run(kubeadm, node_dir, *args):
    result = in_node(node_dir, [kubeadm["path"], *args])
    assert result.returncode == 0, "kubeadm %s: rc=%d\n%s" % (" ".join(args), result.returncode, result.stderr[-3000:])
    return result.stdout


def write_config(kubeadm, node_dir, node, address, *, external_etcd=False):
    path = os.path.join(node_dir, "kubeadm-config.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(CLUSTER_CONFIG.format(node=node, address=address, version=kubeadm["version"],
                                           leaf_hours=LEAF_HOURS, ca_hours=CA_HOURS,
                                           etcd=EXTERNAL_ETCD if external_etcd else ""))
    return "/etc/kubernetes/kubeadm-config.yaml"  # as seen inside the node's namespace


def kubeadm_report(kubeadm, node_dir, config):
    return json.loads(kubeadm_run(kubeadm, node_dir, "certs", "check-expiration", "--config", config, "-o", "json"))


def cert_check_report(node_dir, tmp_path):
    """The cert_check module, run by ansible in the node's namespace with the default kubeadm layout."""
    tree = tempfile.mkdtemp(dir=str(tmp_path), prefix="tree-")
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="True", ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree",
               ANSIBLE_CALLBACK_TREE_DIR=tree, ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="False")
    ansible = shutil.which("ansible") or pytest.fail("ansible is not on PATH")
    result = in_node(node_dir, [ansible, "-i", "localhost,", "-c", "local", "localhost", "-m", "kubepki.certs.cert_check",
                                "-a", "distribution=kubeadm kubeadm_output=true",
                                "-e", "ansible_python_interpreter=%s" % sys.executable], env=env)
    assert result.returncode == 0, "cert_check: rc=%d\n%s\n%s" % (result.returncode, result.stdout[-3000:],
                                                                  result.stderr[-3000:])
    with open(os.path.join(tree, "localhost"), encoding="utf-8") as handle:
        return json.load(handle)


def assert_same(ours, theirs, now_skew=120):
    """Every field kubeadm prints, per certificate and CA, in kubeadm's order; residual time within the seconds
    between the two runs."""
    assert ours["kind"] == theirs["kind"] == "CertificateExpirationInfo"
    assert ours["apiVersion"] == theirs["apiVersion"] == "output.kubeadm.k8s.io/v1alpha3"
    for section in ("certificates", "certificateAuthorities"):
        mine = [{k: item.get(k) for k in COMPARED} for item in ours[section]]
        kubeadms = [{k: item.get(k) for k in COMPARED} for item in theirs[section]]
        assert mine == kubeadms, "%s differ:\nkubepki %s\nkubeadm %s" % (section, json.dumps(mine, indent=1),
                                                                         json.dumps(kubeadms, indent=1))
        for a, b in zip(ours[section], theirs[section]):
            assert abs(a["residualTime"] - b["residualTime"]) <= now_skew, (a, b)


@pytest.fixture(scope="module")
def cp1(kubeadm, mount_point, tmp_path_factory):
    """The init node: every certificate and kubeconfig from kubeadm init, then apiserver renewed 2 s later."""
    node_dir = str(tmp_path_factory.mktemp("cp1"))
    config = write_config(kubeadm, node_dir, "cp1", "10.0.0.1")
    kubeadm_run(kubeadm, node_dir, "init", "phase", "certs", "all", "--config", config)
    kubeadm_run(kubeadm, node_dir, "init", "phase", "kubeconfig", "all", "--config", config)
    time.sleep(2)
    kubeadm_run(kubeadm, node_dir, "certs", "renew", "apiserver", "--config", config)
    return {"dir": node_dir, "config": config}


def copy_node(source, tmp_path, name):
    target = str(tmp_path / name)
    shutil.copytree(source["dir"], target, symlinks=True)
    return {"dir": target, "config": source["config"]}


def test_init_node(kubeadm, cp1, tmp_path):
    theirs = kubeadm_report(kubeadm, cp1["dir"], cp1["config"])
    ours = cert_check_report(cp1["dir"], tmp_path)["kubeadm_expiration_info"]
    assert_same(ours, theirs)
    by_name = {item["name"]: item for item in theirs["certificates"]}
    # The oracle saw what the test set up: the renewed apiserver expires later than its siblings, super-admin.conf
    # is there, and the leaves last LEAF_HOURS, not kubeadm's default year.
    assert by_name["apiserver"]["expirationDate"] > by_name["apiserver-kubelet-client"]["expirationDate"]
    assert not by_name["super-admin.conf"]["missing"]
    assert abs(by_name["apiserver-kubelet-client"]["residualTime"] - LEAF_HOURS * 3600) < 600


def test_joined_control_plane_node(kubeadm, cp1, mount_point, tmp_path):
    """kubeadm join --control-plane: the shared CAs and sa key copied, the node's own leaves and kubeconfigs (no
    super-admin.conf: kubeadm writes it on the init node only)."""
    node_dir = str(tmp_path / "cp2")
    os.makedirs(os.path.join(node_dir, "pki", "etcd"))
    for name in ("ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "sa.key", "sa.pub",
                 "etcd/ca.crt", "etcd/ca.key"):
        shutil.copy2(os.path.join(cp1["dir"], "pki", name), os.path.join(node_dir, "pki", name))
    time.sleep(1)
    config = write_config(kubeadm, node_dir, "cp2", "10.0.0.2")
    kubeadm_run(kubeadm, node_dir, "init", "phase", "certs", "all", "--config", config)
    for kubeconfig in ("admin", "controller-manager", "scheduler", "kubelet"):
        kubeadm_run(kubeadm, node_dir, "init", "phase", "kubeconfig", kubeconfig, "--config", config)
    theirs = kubeadm_report(kubeadm, node_dir, config)
    assert {item["name"]: item["missing"] for item in theirs["certificates"]}["super-admin.conf"] is True
    assert_same(cert_check_report(node_dir, tmp_path)["kubeadm_expiration_info"], theirs)


def test_external_ca_mode(kubeadm, cp1, tmp_path):
    """CA keys removed (kubeadm's external CA mode): the CAs and everything they sign are externally managed."""
    node = copy_node(cp1, tmp_path, "external-ca")
    for key in ("ca.key", "front-proxy-ca.key"):
        os.remove(os.path.join(node["dir"], "pki", key))
    theirs = kubeadm_report(kubeadm, node["dir"], node["config"])
    managed = {item["name"]: item["externallyManaged"] for item in theirs["certificateAuthorities"]}
    assert managed == {"ca": True, "etcd-ca": False, "front-proxy-ca": True}
    assert_same(cert_check_report(node["dir"], tmp_path)["kubeadm_expiration_info"], theirs)


def test_missing_leaf(kubeadm, cp1, tmp_path):
    node = copy_node(cp1, tmp_path, "missing-leaf")
    for name in ("front-proxy-client.crt", "front-proxy-client.key", "scheduler.conf"):
        os.remove(os.path.join(node["dir"], "pki", name) if name.endswith((".crt", ".key"))
                  else os.path.join(node["dir"], name))
    theirs = kubeadm_report(kubeadm, node["dir"], node["config"])
    missing = sorted(item["name"] for item in theirs["certificates"] if item["missing"])
    assert missing == ["front-proxy-client", "scheduler.conf"]
    assert_same(cert_check_report(node["dir"], tmp_path)["kubeadm_expiration_info"], theirs)


def test_external_etcd(kubeadm, mount_point, tmp_path):
    """An external etcd: kubeadm neither writes nor lists the etcd certificates, and neither does cert_check."""
    node_dir = str(tmp_path / "ext-etcd")
    os.makedirs(node_dir)
    config = write_config(kubeadm, node_dir, "cp1", "10.0.0.1", external_etcd=True)
    kubeadm_run(kubeadm, node_dir, "init", "phase", "certs", "all", "--config", config)
    kubeadm_run(kubeadm, node_dir, "init", "phase", "kubeconfig", "all", "--config", config)
    theirs = kubeadm_report(kubeadm, node_dir, config)
    assert not [item for item in theirs["certificates"] if "etcd" in item["name"]]
    assert_same(cert_check_report(node_dir, tmp_path)["kubeadm_expiration_info"], theirs)
