# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""leaf_renew on a node the real kubeadm made, judged by the real kubeadm and OpenSSL.

- kubeadm certs check-expiration sees every certificate renewed (new expiry, not externally managed, present);
- openssl verify -x509_strict accepts every renewed certificate (files, and those embedded in the kubeconfigs)
  against the CA on disk, and each one matches its new key;
- the renewed certificates carry what kubeadm's own ``certs renew`` gives them on a copy of the same node: subject,
  subject alternative names, extended and basic key usage, basic constraints (openssl prints both);
- a rerun renews nothing; check mode writes nothing; an externally managed CA is refused when named.
"""

from __future__ import annotations

import datetime
import os

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
    public_key,
    run_module,
    snapshot,
)


def test_renewal_is_what_kubeadm_renew_gives(kubeadm, cp1, tmp_path):
    ours = copy_node(cp1, str(tmp_path / "ours"))
    theirs = copy_node(cp1, str(tmp_path / "theirs"))
    before = kubeadm_report(kubeadm, ours)

    # check mode: the plan, and no file touched
    files_before = snapshot(ours["dir"])
    rc, planned = run_module(ours, tmp_path, "leaf_renew", {"threshold_days": 100, "backup_dir": str(tmp_path / "bk")},
                             check=True)
    assert rc == 0 and planned["changed"] and len(planned["renewed"]) == 11, planned
    assert snapshot(ours["dir"]) == files_before and not os.path.exists(str(tmp_path / "bk"))

    rc, result = run_module(ours, tmp_path, "leaf_renew", {"threshold_days": 100, "backup_dir": str(tmp_path / "bk")})
    assert rc == 0 and result["changed"], result
    assert sorted(result["renewed"]) == sorted(list(FILES) + list(KUBECONFIGS))
    assert result["restart"] == ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    kubeadm_run(kubeadm, theirs["dir"], "certs", "renew", "all", "--config", theirs["config"])

    # kubeadm sees every certificate renewed: about a year left now (the cp1 leaves had 2000 hours)
    after = kubeadm_report(kubeadm, ours)
    now = datetime.datetime.now(datetime.timezone.utc)
    for old, new in zip(before["certificates"], after["certificates"]):
        assert new["name"] == old["name"] and not new["missing"] and not new["externallyManaged"]
        assert new["expirationDate"] > old["expirationDate"], new
        left = datetime.datetime.strptime(new["expirationDate"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc) - now
        assert datetime.timedelta(days=364) < left <= datetime.timedelta(days=365), new
    assert [ca["expirationDate"] for ca in after["certificateAuthorities"]] == \
        [ca["expirationDate"] for ca in before["certificateAuthorities"]]  # the CAs are not touched

    for name in list(FILES) + list(KUBECONFIGS):
        cert, key = certificate_and_key(ours, name, tmp_path / "ours")
        ca = os.path.join(ours["dir"], CA_OF.get(name, "pki/ca.crt"))
        assert openssl("verify", "-x509_strict", "-CAfile", ca, cert).strip().endswith(": OK")
        assert public_key(cert, private=False) == public_key(key, private=True), name
        their_cert = certificate_and_key(theirs, name, tmp_path / "theirs")[0]
        assert profile(cert) == profile(their_cert), name
    assert os.stat(os.path.join(ours["dir"], "pki", "apiserver.key")).st_mode & 0o777 == 0o600

    # a rerun renews nothing
    files_after = snapshot(ours["dir"])
    rc, again = run_module(ours, tmp_path, "leaf_renew", {"threshold_days": 100, "backup_dir": str(tmp_path / "bk")})
    assert rc == 0 and not again["changed"] and again["renewed"] == [] and again["restart"] == [], again
    assert snapshot(ours["dir"]) == files_after


def test_external_ca_refused_when_named(kubeadm, cp1, tmp_path):
    node = copy_node(cp1, str(tmp_path / "external"))
    os.remove(os.path.join(node["dir"], "pki", "front-proxy-ca.key"))
    files = snapshot(node["dir"])
    rc, result = run_module(node, tmp_path, "leaf_renew", {"names": ["front-proxy-client", "apiserver"], "force": True,
                                                           "backup_dir": str(tmp_path / "bk")})
    assert rc != 0 and "front-proxy-client: the front-proxy-ca CA is externally managed" in result["msg"], result
    assert snapshot(node["dir"]) == files
    # without names the externally managed one is skipped, the rest renewed; kubeadm agrees on which is external
    rc, result = run_module(node, tmp_path, "leaf_renew", {"force": True, "backup_dir": str(tmp_path / "bk")})
    assert rc == 0 and result["not_renewable"] == ["front-proxy-client"], result
    external = [item["name"] for item in kubeadm_report(kubeadm, node)["certificates"] if item["externallyManaged"]]
    assert external == ["front-proxy-client"]
