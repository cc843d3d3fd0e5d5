# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""external_ca on a node the real kubeadm made: requests, signing on the "controller" (a directory outside the node
holding the operator's CA keys), installing with the CA keys removed. Judged by the real kubeadm and OpenSSL:

- each CSR asks for what ``kubeadm certs generate-csr`` asks for with the node's config (subject, DNS/IP names);
- after the install, ``kubeadm certs check-expiration`` reports every CA and certificate EXTERNALLY MANAGED, present,
  with the new expiry; openssl verify -x509_strict accepts every installed certificate against the node's CA;
- the installed certificates carry kubeadm's profile (as on the node before: extended key usages included);
- no CA key is left on the node, the backup included.
"""

from __future__ import annotations

import os
import shutil

from kubeadm_node import (
    CA_OF,
    FILES,
    KUBECONFIGS,
    certificate_and_key,
    copy_node,
    kubeadm_report,
    kubeadm_run,
    openssl,
    profile,
    run_module,
    run_on_controller,
)

CA_FILES = {"ca": "pki/ca", "front-proxy-ca": "pki/front-proxy-ca", "etcd-ca": "pki/etcd/ca"}


def request_identity(csr_path):
    """Subject and requested subject alternative names, as openssl prints them (order-free)."""
    text = openssl("req", "-in", csr_path, "-noout", "-nameopt", "RFC2253", "-subject", "-text")
    subject = [line for line in text.splitlines() if line.startswith("subject=")]
    lines = text.splitlines()
    sans = []
    for index, line in enumerate(lines):
        if "X509v3 Subject Alternative Name" in line:
            sans = sorted(part.strip() for part in lines[index + 1].split(","))
    return subject, sans


def test_external_ca_mode_end_to_end(kubeadm, cp1, tmp_path):
    node = copy_node(cp1, str(tmp_path / "node"))
    controller = tmp_path / "controller"
    # the operator holds the CA keys on the controller (copied there here; on a real cluster they were never on the
    # node, or are moved off it by this procedure)
    for name, base in CA_FILES.items():
        os.makedirs(str(controller / name))
        for suffix in (".crt", ".key"):
            shutil.copy2(os.path.join(node["dir"], base + suffix), str(controller / name / ("ca" + suffix)))
    before = kubeadm_report(kubeadm, node)

    # 1. requests on the node, in a directory inside the node's /etc/kubernetes tree (so the namespace sees it)
    request_in_node = "/etc/kubernetes/kubepki-csr"
    rc, requested = run_module(node, tmp_path, "external_ca", {"step": "request", "request_dir": request_in_node})
    assert rc == 0 and requested["changed"] and len(requested["items"]) == 11, requested
    request_dir = os.path.join(node["dir"], "kubepki-csr")
    rc, again = run_module(node, tmp_path, "external_ca", {"step": "request", "request_dir": request_in_node})
    assert rc == 0 and not again["changed"], again

    # the same subjects and names as kubeadm's own generate-csr with the node's config
    theirs = tmp_path / "kubeadm-csr"
    kubeadm_run(kubeadm, node["dir"], "certs", "generate-csr", "--config", node["config"],
                "--cert-dir", str(theirs / "pki"), "--kubeconfig-dir", str(theirs))
    for name in list(FILES) + list(KUBECONFIGS):
        relative = name if name in KUBECONFIGS else FILES[name]
        ours_csr = os.path.join(request_dir, relative + ".csr")
        their_csr = str(theirs / (relative + ".csr"))
        assert request_identity(ours_csr) == request_identity(their_csr), name
        assert os.stat(os.path.join(request_dir, relative + ".key")).st_mode & 0o777 == 0o600

    # 2. signing on the controller, one CA at a time (the request dir copied there and back)
    on_controller = str(controller / "requests")
    shutil.copytree(request_dir, on_controller)
    for ca_name in CA_FILES:
        rc, signed = run_on_controller(tmp_path, "external_ca", {
            "step": "sign", "request_dir": on_controller, "ca_name": ca_name, "validity_days": 200,
            "ca_cert": str(controller / ca_name / "ca.crt"), "ca_key": str(controller / ca_name / "ca.key")})
        assert rc == 0 and signed["changed"], signed
    shutil.rmtree(request_dir)
    shutil.copytree(on_controller, request_dir)

    # 3. install with the CA keys removed
    rc, installed = run_module(node, tmp_path, "external_ca", {
        "step": "install", "request_dir": request_in_node, "remove_ca_keys": True,
        "backup_dir": "/etc/kubernetes/kubepki-backup"})
    assert rc == 0 and installed["changed"], installed
    assert sorted(installed["removed"]) == sorted("/etc/kubernetes/%s.key" % base for base in CA_FILES.values())
    for base in CA_FILES.values():
        assert not os.path.exists(os.path.join(node["dir"], base + ".key"))
    for root, _dirs, files in os.walk(os.path.join(node["dir"], "kubepki-backup")):
        assert not [f for f in files if f in ("ca.key", "front-proxy-ca.key")], (root, files)

    after = kubeadm_report(kubeadm, node)
    assert all(ca["externallyManaged"] and not ca["missing"] for ca in after["certificateAuthorities"]), after
    for old, new in zip(before["certificates"], after["certificates"]):
        assert new["name"] == old["name"] and new["externallyManaged"] and not new["missing"], new
        assert new["expirationDate"] != old["expirationDate"] and 199 * 86400 < new["residualTime"] <= 200 * 86400, new

    reference = copy_node(cp1, str(tmp_path / "reference"))
    for name in list(FILES) + list(KUBECONFIGS):
        cert, _key = certificate_and_key(node, name, tmp_path)
        ca = os.path.join(node["dir"], CA_OF.get(name, "pki/ca.crt"))
        assert openssl("verify", "-x509_strict", "-CAfile", ca, cert).strip().endswith(": OK"), name
        original = certificate_and_key(reference, name, tmp_path / "reference")[0]
        assert profile(cert) == profile(original), name

    # installing again changes nothing
    rc, rerun = run_module(node, tmp_path, "external_ca", {
        "step": "install", "request_dir": request_in_node, "remove_ca_keys": True,
        "backup_dir": "/etc/kubernetes/kubepki-backup"})
    assert rc == 0 and not rerun["changed"], rerun
