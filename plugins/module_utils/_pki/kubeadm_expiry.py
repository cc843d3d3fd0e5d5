# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""kubeadm's own view of a node's expiry report: the ``CertificateExpirationInfo`` object
(output.kubeadm.k8s.io/v1alpha3) that ``kubeadm certs check-expiration -o json`` prints, built from the entries of
``expiry.check_expiration`` and the layout table's kubeadm names. Pure apart from ``os.path.exists``."""

from __future__ import annotations

import datetime
import json
import os

from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_examination import as_utc
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report import STATUS_INVALID, STATUS_MISSING

KIND = "CertificateExpirationInfo"
API_VERSION = "output.kubeadm.k8s.io/v1alpha3"
ETCD_CA = "etcd-ca"
KUBECONFIG_CA = "ca"  # kubeadm signs every kubeconfig client certificate with the cluster CA


def externally_managed_cas(layout) -> dict:
    """CA name -> True when its certificate is there and its key is not (kubeadm's external CA mode)."""
    return {ca.name: os.path.exists(os.path.join(layout.tls_dir, ca.cert))
            and not os.path.exists(os.path.join(layout.tls_dir, ca.key))
            for ca in layout.cas}


def etcd_is_local(layout) -> bool:
    """kubeadm lists the etcd certificates unless the cluster uses an external etcd; on the node that shows as the
    etcd static pod manifest or the etcd CA being there."""
    return os.path.exists(layout.extra["etcd_manifest"]) or os.path.exists(layout.ca_paths(ETCD_CA)[0])


def _by_path(entries: list) -> dict:
    """path -> the entry of a certificate file, or of a kubeconfig's (first) client certificate."""
    found = {}
    for entry in entries:
        label = entry.get("kubeconfig_entry")
        if label is None or label.startswith("user/"):
            found.setdefault(entry["path"], entry)
    return found


def _residual_seconds(not_after: str, now: datetime.datetime) -> int:
    expiry = datetime.datetime.strptime(not_after, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    return int((expiry - now).total_seconds())  # int() truncates toward zero, as Go's Duration / time.Second


def _item(name: str, entry: dict | None, *, now: datetime.datetime, external: bool, ca_name: str | None) -> dict:
    if entry is None or entry["status"] in (STATUS_MISSING, STATUS_INVALID) or not entry.get("not_after"):
        # kubeadm: "the certificate does not exist (for any reason)": name and missing only
        return {"name": name, "expirationDate": None, "residualTime": 0, "externallyManaged": False, "missing": True}
    # kubeadm's field order (caName, omitted when empty, before missing), so the object serialises as kubeadm prints it
    item = {"name": name, "expirationDate": entry["not_after"], "residualTime": _residual_seconds(entry["not_after"], now),
            "externallyManaged": external}
    if ca_name:
        item["caName"] = ca_name
    item["missing"] = False
    return item


def kubeadm_expiration_info(layout, entries: list, *, now: datetime.datetime | None = None,
                            etcd_local: bool | None = None) -> dict:
    """The CertificateExpirationInfo kubeadm prints for this node, from ``check_expiration``'s entries.

    Certificates: the layout's leaves and the kubeconfigs kubeadm renews; CAs: the layout's CAs (the etcd CA and
    the certificates it signs only with a local etcd, as kubeadm lists them); both sorted by name as kubeadm sorts them. A certificate is externally managed
    when its CA is. ``etcd_local`` defaults to what the node shows (:func:`etcd_is_local`)."""
    if layout.distribution != "kubeadm":
        raise ValueError("kubeadm_expiration_info needs the kubeadm layout, not %s" % layout.distribution)
    moment = as_utc(now)
    local_etcd = etcd_is_local(layout) if etcd_local is None else etcd_local
    external = externally_managed_cas(layout)
    found = _by_path(entries)
    certificates = []
    for leaf in layout.leaves:
        if leaf.ca == ETCD_CA and not local_etcd:
            continue
        certificates.append(_item(leaf.name, found.get(os.path.join(layout.tls_dir, leaf.cert)), now=moment,
                                  external=external[leaf.ca], ca_name=leaf.ca))
    for name in layout.extra["renewable_kubeconfigs"]:
        certificates.append(_item(name, found.get(os.path.join(layout.data_dir, name)), now=moment,
                                  external=external[KUBECONFIG_CA], ca_name=KUBECONFIG_CA))
    authorities = [_item(ca.name, found.get(os.path.join(layout.tls_dir, ca.cert)), now=moment,
                         external=external[ca.name], ca_name=None)
                   for ca in layout.cas if local_etcd or ca.name != ETCD_CA]
    return {
        "kind": KIND,
        "apiVersion": API_VERSION,
        "certificates": sorted(certificates, key=lambda item: item["name"]),
        "certificateAuthorities": sorted(authorities, key=lambda item: item["name"]),
    }


def expiration_info_text(info: dict) -> str:
    """The text ``kubeadm certs check-expiration -o json`` prints for ``info`` (4-space indent, its field order kept)."""
    return json.dumps(info, indent=4) + "\n"
