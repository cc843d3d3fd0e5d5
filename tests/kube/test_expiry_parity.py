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

from kubeadm_node import LEAF_HOURS, copy_node, kubeadm_report, new_node, run_module

COMPARED = ("name", "expirationDate", "caName", "externallyManaged", "missing")


def cert_check_report(node, tmp_path):
    """cert_check's kubeadm_expiration_info, the module run in the node's namespace with the default layout."""
    rc, result = run_module(node, tmp_path, "cert_check", {"distribution": "kubeadm", "kubeadm_output": True})
    assert rc == 0, result
    return result["kubeadm_expiration_info"]


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


def test_init_node(kubeadm, cp1, tmp_path):
    theirs = kubeadm_report(kubeadm, cp1)
    assert_same(cert_check_report(cp1, tmp_path), theirs)
    by_name = {item["name"]: item for item in theirs["certificates"]}
    # The oracle saw what the test set up: the renewed apiserver expires later than its siblings, super-admin.conf
    # is there, and the leaves last LEAF_HOURS, not kubeadm's default year.
    assert by_name["apiserver"]["expirationDate"] > by_name["apiserver-kubelet-client"]["expirationDate"]
    assert not by_name["super-admin.conf"]["missing"]
    assert abs(by_name["apiserver-kubelet-client"]["residualTime"] - LEAF_HOURS * 3600) < 600


def test_joined_control_plane_node(kubeadm, cp1, tmp_path):
    """kubeadm join --control-plane: the shared CAs and sa key copied, the node's own leaves and kubeconfigs (no
    super-admin.conf: kubeadm writes it on the init node only)."""
    node_dir = str(tmp_path / "cp2")
    os.makedirs(os.path.join(node_dir, "pki", "etcd"))
    for name in ("ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "sa.key", "sa.pub",
                 "etcd/ca.crt", "etcd/ca.key"):
        shutil.copy2(os.path.join(cp1["dir"], "pki", name), os.path.join(node_dir, "pki", name))
    node = new_node(kubeadm, node_dir, "cp2", "10.0.0.2",
                    kubeconfigs=("admin", "controller-manager", "scheduler", "kubelet"))
    theirs = kubeadm_report(kubeadm, node)
    assert {item["name"]: item["missing"] for item in theirs["certificates"]}["super-admin.conf"] is True
    assert_same(cert_check_report(node, tmp_path), theirs)


def test_external_ca_mode(kubeadm, cp1, tmp_path):
    """CA keys removed (kubeadm's external CA mode): the CAs and everything they sign are externally managed."""
    node = copy_node(cp1, str(tmp_path / "external-ca"))
    for key in ("ca.key", "front-proxy-ca.key"):
        os.remove(os.path.join(node["dir"], "pki", key))
    theirs = kubeadm_report(kubeadm, node)
    managed = {item["name"]: item["externallyManaged"] for item in theirs["certificateAuthorities"]}
    assert managed == {"ca": True, "etcd-ca": False, "front-proxy-ca": True}
    assert_same(cert_check_report(node, tmp_path), theirs)


def test_missing_leaf(kubeadm, cp1, tmp_path):
    node = copy_node(cp1, str(tmp_path / "missing-leaf"))
    for name in ("pki/front-proxy-client.crt", "pki/front-proxy-client.key", "scheduler.conf"):
        os.remove(os.path.join(node["dir"], name))
    theirs = kubeadm_report(kubeadm, node)
    missing = sorted(item["name"] for item in theirs["certificates"] if item["missing"])
    assert missing == ["front-proxy-client", "scheduler.conf"]
    assert_same(cert_check_report(node, tmp_path), theirs)


def test_external_etcd(kubeadm, mount_point, tmp_path):
    """An external etcd: kubeadm neither writes nor lists the etcd certificates, and neither does cert_check."""
    node = new_node(kubeadm, str(tmp_path / "ext-etcd"), "cp1", "10.0.0.1", external_etcd=True)
    theirs = kubeadm_report(kubeadm, node)
    assert not [item for item in theirs["certificates"] if "etcd" in item["name"]]
    assert_same(cert_check_report(node, tmp_path), theirs)
