# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""What a kubeadm CA rotation reads and writes through the apiserver, as pure functions on the API objects (the module
runs kubectl): the namespaces whose kube-root-ca.crt does not hold the new CA yet, and kube-public/cluster-info's
kubeconfig with its CA data replaced."""

from __future__ import annotations

import base64
import json
import re

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import fingerprint_sha256, load_certificates
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError

ROOT_CA_CONFIGMAP = "kube-root-ca.crt"  # published in every namespace by the controller-manager from --root-ca-file


def _json(text: str, what: str):
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidInputError("%s is not JSON: %s" % (what, text[:200])) from None


def stale_root_ca(configmaps_json: str, new_pem: bytes) -> list:
    """Namespaces whose kube-root-ca.crt ConfigMap lacks the new CA (its ca.crt is a bundle; compared by fingerprint)."""
    wanted = fingerprint_sha256(load_certificates(new_pem, source="the new CA")[0])
    stale = []
    for item in _json(configmaps_json, "the kube-root-ca.crt ConfigMaps").get("items", []):
        namespace = item.get("metadata", {}).get("namespace", "?")
        data = (item.get("data") or {}).get("ca.crt", "")
        try:
            held = [fingerprint_sha256(c) for c in load_certificates(data.encode("ascii"), source=namespace)]
        except (InvalidInputError, UnicodeEncodeError):
            held = []
        if wanted not in held:
            stale.append(namespace)
    return sorted(stale)


def cluster_info_patch(configmap_json: str, ca_pem: bytes) -> dict | None:
    """The merge patch that puts ``ca_pem`` as the certificate-authority-data of cluster-info's kubeconfig; None when it
    holds that already. One CA, never a bundle: kubeadm join loops on a bundle there (kubernetes/kubeadm#1399)."""
    kubeconfig = ((_json(configmap_json, "kube-public/cluster-info").get("data") or {}).get("kubeconfig")) or ""
    value = base64.b64encode(ca_pem).decode("ascii")
    new_text, count = re.subn(r"(certificate-authority-data:[ \t]*)\S+", lambda m: m.group(1) + value, kubeconfig)
    if count != 1:
        raise InvalidInputError("kube-public/cluster-info: its kubeconfig has %d certificate-authority-data values, not one" % count)
    if new_text == kubeconfig:
        return None
    return {"data": {"kubeconfig": new_text}}
