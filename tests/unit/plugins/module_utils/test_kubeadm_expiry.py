# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeadm_expiry: cert_check entries -> kubeadm's CertificateExpirationInfo (names, order, external CA, missing).

The comparison with the real kubeadm is tests/kube/test_expiry_parity.py; these cover the mapping's edges."""

from __future__ import annotations

import datetime
import os

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import kubeadm_expiry
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import get_layout

NOW = datetime.datetime(2026, 12, 3, 12, 0, 0, tzinfo=datetime.timezone.utc)
CERT_NAMES = ["admin.conf", "apiserver", "apiserver-etcd-client", "apiserver-kubelet-client", "controller-manager.conf",
              "etcd-healthcheck-client", "etcd-peer", "etcd-server", "front-proxy-client", "scheduler.conf",
              "super-admin.conf"]


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("x")


def _entry(path, not_after="2027-12-03T12:00:01Z", status="OK", kubeconfig_entry=None):
    return {"path": path, "kubeconfig_entry": kubeconfig_entry, "not_after": not_after, "status": status}


def _node(tmp_path, *, ca_keys=True, etcd=True):
    layout = get_layout("kubeadm", data_dir=str(tmp_path))
    entries = []
    for ca in layout.cas:
        if ca.name == "etcd-ca" and not etcd:
            continue
        _touch(os.path.join(layout.tls_dir, ca.cert))
        if ca_keys:
            _touch(os.path.join(layout.tls_dir, ca.key))
        entries.append(_entry(os.path.join(layout.tls_dir, ca.cert), "2036-12-01T00:00:00Z"))
    for leaf in layout.leaves:
        if leaf.ca != "etcd-ca" or etcd:
            entries.append(_entry(os.path.join(layout.tls_dir, leaf.cert)))
    for name in ("admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"):
        path = os.path.join(str(tmp_path), name)
        entries.append(_entry(path, "2036-12-01T00:00:00Z", kubeconfig_entry="cluster/kubernetes"))
        entries.append(_entry(path, "2027-06-01T00:00:00Z", kubeconfig_entry="user/u"))
    return layout, entries


def test_names_order_and_fields(tmp_path):
    layout, entries = _node(tmp_path)
    info = kubeadm_expiry.kubeadm_expiration_info(layout, entries, now=NOW)
    assert info["kind"] == "CertificateExpirationInfo" and info["apiVersion"] == "output.kubeadm.k8s.io/v1alpha3"
    assert [item["name"] for item in info["certificates"]] == CERT_NAMES
    assert [item["name"] for item in info["certificateAuthorities"]] == ["ca", "etcd-ca", "front-proxy-ca"]
    admin = info["certificates"][0]
    # the client certificate (user/...), not the CA data of the same kubeconfig; kubelet.conf is not listed
    assert admin == {"name": "admin.conf", "expirationDate": "2027-06-01T00:00:00Z",
                     "residualTime": int((datetime.datetime(2027, 6, 1, tzinfo=datetime.timezone.utc) - NOW)
                                         .total_seconds()),
                     "externallyManaged": False, "caName": "ca", "missing": False}
    assert {item["name"]: item["caName"] for item in info["certificates"]}["etcd-peer"] == "etcd-ca"
    assert {item["name"]: item["caName"] for item in info["certificates"]}["front-proxy-client"] == "front-proxy-ca"
    assert "caName" not in info["certificateAuthorities"][0]
    assert info["certificates"][1]["residualTime"] == 365 * 86400 + 1


def test_residual_time_truncates_toward_zero_when_expired(tmp_path):
    layout, entries = _node(tmp_path)
    for entry in entries:
        if entry["path"].endswith("apiserver.crt"):
            entry.update(not_after="2026-12-03T11:59:58Z", status="EXPIRED")
    moment = NOW + datetime.timedelta(microseconds=500000)
    info = kubeadm_expiry.kubeadm_expiration_info(layout, entries, now=moment)
    apiserver = [item for item in info["certificates"] if item["name"] == "apiserver"][0]
    assert apiserver["residualTime"] == -2 and not apiserver["missing"]


def test_external_ca_marks_the_ca_and_what_it_signs(tmp_path):
    layout, entries = _node(tmp_path)
    os.remove(os.path.join(layout.tls_dir, "ca.key"))
    info = kubeadm_expiry.kubeadm_expiration_info(layout, entries, now=NOW)
    managed = {item["name"]: item["externallyManaged"] for item in info["certificates"]}
    assert [name for name, value in managed.items() if value] == [
        "admin.conf", "apiserver", "apiserver-kubelet-client", "controller-manager.conf", "scheduler.conf",
        "super-admin.conf"]
    assert {item["name"]: item["externallyManaged"] for item in info["certificateAuthorities"]} == {
        "ca": True, "etcd-ca": False, "front-proxy-ca": False}


def test_missing_and_invalid_are_missing(tmp_path):
    layout, entries = _node(tmp_path)
    entries = [e for e in entries if not e["path"].endswith("super-admin.conf")]
    for entry in entries:
        if entry["path"].endswith("front-proxy-client.crt"):
            entry.update(status="INVALID", not_after=None)
        if entry["path"].endswith("etcd/peer.crt"):
            entry.update(status="MISSING", not_after=None)
    info = kubeadm_expiry.kubeadm_expiration_info(layout, entries, now=NOW)
    missing = [item for item in info["certificates"] if item["missing"]]
    assert [item["name"] for item in missing] == ["etcd-peer", "front-proxy-client", "super-admin.conf"]
    assert missing[0] == {"name": "etcd-peer", "expirationDate": None, "residualTime": 0, "externallyManaged": False,
                          "missing": True}


def test_external_etcd_lists_no_etcd_certificate(tmp_path):
    layout, entries = _node(tmp_path, etcd=False)
    assert not kubeadm_expiry.etcd_is_local(layout)
    info = kubeadm_expiry.kubeadm_expiration_info(layout, entries, now=NOW)
    assert [item["name"] for item in info["certificates"]] == [n for n in CERT_NAMES if "etcd" not in n]
    assert [item["name"] for item in info["certificateAuthorities"]] == ["ca", "front-proxy-ca"]
    # the static pod manifest alone says etcd is local (the etcd CA may still be on its way)
    _touch(os.path.join(str(tmp_path), "manifests", "etcd.yaml"))
    assert kubeadm_expiry.etcd_is_local(layout)
    assert kubeadm_expiry.kubeadm_expiration_info(layout, entries, now=NOW, etcd_local=False)["certificateAuthorities"] \
        == info["certificateAuthorities"]


def test_only_the_kubeadm_layout(tmp_path):
    with pytest.raises(ValueError):
        kubeadm_expiry.kubeadm_expiration_info(get_layout("k3s", data_dir=str(tmp_path)), [], now=NOW)
