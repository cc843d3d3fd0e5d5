# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""cert_check's RKE1 support on files rke's own Go code wrote (github.com/rancher/rke, tests/rke1/gen).

Verdicts come from elsewhere: which CA signed a certificate from ``openssl verify -x509_strict``, key matches from
openssl's public keys, fingerprints and serials from ``openssl x509``, which node file is stale from comparing the
node files before and after rke's rotation byte for byte, pending names from the state file's JSON.
"""

from __future__ import annotations

import filecmp
import json
import os

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_check import (
    check_rkestate,
    compare_node_files,
    node_expectations,
    pending_names,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_state import read_rkestate
from rke1_fixtures import (
    ADDRESSES,
    copy_cluster,
    expired_ca,
    openssl_fingerprint,
    openssl_public_keys_equal,
    openssl_serial,
    openssl_verifies,
    run_generator,
    run_module,
    write_pem,
)

NAMES = get_layout("rke1").extra["certificate_names"]


def _entries(report, section="currentState"):
    marker = "#%s/" % section
    return dict((entry["path"].split(marker, 1)[1], entry) for entry in report["certificates"] if marker in entry["path"])


def _changed_names(before: str, after: str) -> set:
    """Certificate names whose .pem file differs byte for byte between two copies of one node's ssl dir."""
    names = set()
    for file_name in sorted(os.listdir(after)):
        if file_name.endswith(".pem") and not file_name.endswith("-key.pem"):
            old = os.path.join(before, file_name)
            if not os.path.exists(old) or not filecmp.cmp(old, os.path.join(after, file_name), shallow=False):
                names.add(file_name[:-len(".pem")])
    return names


def test_every_state_certificate_signer_and_key_agree_with_openssl(cluster, tmp_path):
    document = cluster.document()["currentState"]["certificatesBundle"]
    entries = _entries(check_rkestate(read_rkestate(cluster.state)))
    assert sorted(entries) == sorted(document)
    assert "kube-admin" in entries and "kube-etcd-10-0-0-2" in entries and "kube-kubelet-10-0-0-3" in entries
    cas = dict((name, write_pem(str(tmp_path), name + ".pem", document[name]["certificatePEM"]))
               for name in ("kube-ca", "kube-apiserver-requestheader-ca"))
    for name, raw in sorted(document.items()):
        cert = write_pem(str(tmp_path), "%s.pem" % name, raw["certificatePEM"])
        key = write_pem(str(tmp_path), "%s-key.pem" % name, raw["keyPEM"])
        verified_by = sorted(ca for ca, ca_file in cas.items() if openssl_verifies(cert, ca_file))
        entry = entries[name]
        if entry["signed_by"] == "self":
            assert name in cas and verified_by == [name], name
        else:
            assert verified_by == [entry["signed_by"].rsplit("#currentState/", 1)[1]], name
        assert entry["status"] == "OK", (name, entry["reason"])
        assert entry["key_matches"] is openssl_public_keys_equal(cert, key) is True, name
        assert entry["serial"] == openssl_serial(cert), name
    # rke's leaves are valid ten years, like its CA (the override in pki/util.go newSignedCert)
    assert min(entry["days_left"] for entry in entries.values()) >= 3649


@pytest.mark.parametrize("fixture", ["cluster", "plain_cluster"])
def test_expected_node_certificates_are_the_ones_rke_deployed(fixture, request):
    cluster = request.getfixturevalue(fixture)
    expected = node_expectations(read_rkestate(cluster.state), NAMES)
    assert sorted(expected) == sorted(ADDRESSES)
    for address in ADDRESSES:
        ssl = cluster.ssl(address)
        assert set(expected[address]) == cluster.node_certificate_names(address), address
        for name, fields in expected[address].items():
            assert fields["sha256"] == openssl_fingerprint(os.path.join(ssl, name + ".pem")), (address, name)
        assert compare_node_files(lambda file_name, ssl=ssl: os.path.join(ssl, file_name), expected[address]) == []
    kubelet_certs = set(name for name in expected["10.0.0.3"] if name.startswith("kube-kubelet-"))
    assert kubelet_certs == (set() if fixture == "plain_cluster" else
                             {"kube-kubelet-10-0-0-1", "kube-kubelet-10-0-0-2", "kube-kubelet-10-0-0-3"})


@pytest.mark.parametrize("rotation", ["apiserver_rotated", "ca_rotated"])
def test_node_files_left_from_before_a_rotation_are_stale(rotation, cluster, request):
    rotated = request.getfixturevalue(rotation)
    expected = node_expectations(read_rkestate(rotated.state), NAMES)
    all_stale = set()
    for address in ADDRESSES:
        old_ssl = cluster.ssl(address)
        stale = compare_node_files(lambda file_name, ssl=old_ssl: os.path.join(ssl, file_name), expected[address])
        changed = _changed_names(old_ssl, rotated.ssl(address))
        assert set(record["name"] for record in stale) == changed, address
        assert all(record["problem"] == "differs" for record in stale)
        for record in stale:
            assert record["path"] == os.path.join(old_ssl, record["name"] + ".pem")
            assert openssl_serial(record["path"]) in record["reason"]
            assert openssl_serial(os.path.join(rotated.ssl(address), record["name"] + ".pem")) in record["reason"]
        all_stale |= set("%s:%s" % (address, record["name"]) for record in stale)
    if rotation == "apiserver_rotated":
        assert all_stale == {"10.0.0.1:kube-apiserver"}
    else:
        assert "10.0.0.3:kube-ca" in all_stale and "203.0.113.2:kube-etcd-10-0-0-2" in all_stale
        new_ca = os.path.join(rotated.ssl("10.0.0.1"), "kube-ca.pem")
        assert not openssl_verifies(os.path.join(cluster.ssl("10.0.0.1"), "kube-apiserver.pem"), new_ca)


def test_the_service_account_key_survives_a_ca_rotation_signed_by_the_old_ca(cluster, ca_rotated):
    """rke keeps the service-account token key pair across --rotate-ca (so tokens keep verifying): its certificate
    still chains to the old kube-ca, which the report shows as no signer in the state."""
    entries = _entries(check_rkestate(read_rkestate(ca_rotated.state)))
    old_ca = os.path.join(cluster.ssl("10.0.0.1"), "kube-ca.pem")
    token_cert = os.path.join(ca_rotated.ssl("10.0.0.1"), "kube-service-account-token.pem")
    assert openssl_verifies(token_cert, old_ca)
    assert not openssl_verifies(token_cert, os.path.join(ca_rotated.ssl("10.0.0.1"), "kube-ca.pem"))
    assert entries["kube-service-account-token"]["signed_by"] is None
    assert entries["kube-apiserver"]["signed_by"].endswith("#currentState/kube-ca")


def test_an_interrupted_rotation_is_seen_on_the_nodes_not_in_the_state(cluster, interrupted):
    """`rke cert rotate` writes the new certificates into currentState as well as desiredState before it deploys
    anything (its rotation changes the bundle map both sections share): a rotation interrupted before the nodes
    leaves a state file that looks complete. Only the node comparison shows it."""
    before, after = cluster.document(), interrupted.document()
    current, desired = (after[section]["certificatesBundle"] for section in ("currentState", "desiredState"))
    assert all(desired[name]["certificatePEM"] == current[name]["certificatePEM"] for name in desired)
    rotated = sorted(name for name in current if current[name]["certificatePEM"]
                     != before["currentState"]["certificatesBundle"][name]["certificatePEM"])
    assert "kube-apiserver" in rotated and "kube-ca" not in rotated
    state = read_rkestate(interrupted.state)
    assert pending_names(state) == []
    expected = node_expectations(state, NAMES)
    for address in ADDRESSES:
        ssl = cluster.ssl(address)
        stale = compare_node_files(lambda file_name, ssl=ssl: os.path.join(ssl, file_name), expected[address])
        assert sorted(record["name"] for record in stale) == sorted(set(rotated) & set(expected[address])), address


def test_certificates_regenerated_by_rke_up_and_not_deployed_are_pending(cluster, tmp_path):
    """`rke up` regenerates into desiredState only (rebuildExistingState): a certificate there that differs from
    currentState was generated and not deployed. Made here by replacing one desiredState certificate with another
    one rke wrote (the node certificate of the same cluster)."""
    document = cluster.document()
    desired = document["desiredState"]["certificatesBundle"]
    desired["kube-proxy"] = dict(desired["kube-node"], name="kube-proxy")
    path = str(tmp_path / "cluster.rkestate")
    with open(path, "w") as handle:
        json.dump(document, handle)
    state = read_rkestate(path)
    assert pending_names(state) == ["kube-proxy"]
    assert sorted(_entries(check_rkestate(state), "desiredState")) == ["kube-proxy"]


def test_an_expired_ca_is_reported_and_rke_refuses_a_plain_rotation(generator, cluster, tmp_path):
    """kube-ca replaced by a CA that expired in 2024 (made by openssl): openssl rejects it, the report says EXPIRED,
    and rke's own rotation refuses to run without --rotate-ca, with its message (rke#1974); --rotate-ca goes on."""
    copy = copy_cluster(cluster, str(tmp_path / "expired"))
    ca_pem, key_pem = expired_ca(str(tmp_path / "ca"), "kube-ca")
    document = copy.document()
    for section in ("currentState", "desiredState"):
        document[section]["certificatesBundle"]["kube-ca"].update(certificatePEM=ca_pem, keyPEM=key_pem)
    with open(copy.state, "w") as handle:
        json.dump(document, handle)
    ca_file = write_pem(str(tmp_path), "expired-ca.pem", ca_pem)
    assert not openssl_verifies(ca_file, ca_file)
    entries = _entries(check_rkestate(read_rkestate(copy.state)))
    assert entries["kube-ca"]["status"] == "EXPIRED" and entries["kube-ca"]["key_matches"] is True
    assert entries["kube-apiserver"]["signed_by"] is None  # issued by the CA that was replaced
    refused = run_generator(generator, "rotate", "-config", copy.config, "-nodes", copy.nodes, check=False)
    assert refused.returncode != 0
    assert "CA certificate is invalid, please use the --rotate-ca flag" in refused.stderr
    run_generator(generator, "rotate", "-config", copy.config, "-nodes", copy.nodes, "-rotate-ca")
    rotated = _entries(check_rkestate(read_rkestate(copy.state)))
    assert rotated["kube-ca"]["status"] == "OK"
    assert rotated["kube-apiserver"]["signed_by"].endswith("#currentState/kube-ca")


def test_cert_check_reads_the_state_file_and_compares_a_node(cluster, apiserver_rotated, tmp_path):
    rc, state_run = run_module(str(tmp_path), {"distribution": "rke1", "rkestate": apiserver_rotated.state})
    assert rc == 0, state_run.get("msg")
    assert state_run["changed"] is False and state_run["stale"] == [] and state_run["scanned_dirs"] == []
    assert state_run["summary"]["counts"]["OK"] == state_run["summary"]["total"] == len(state_run["rkestate"]["current"])
    assert "keyPEM" not in str(state_run) and "PRIVATE KEY" not in str(state_run)
    expected = state_run["rkestate"]["nodes"]["10.0.0.1"]
    rc, node_run = run_module(str(tmp_path), {"distribution": "rke1", "data_dir": cluster.data_dir("10.0.0.1"),
                                              "rkestate_expected": expected, "fail_on_stale": True})
    assert rc != 0
    assert [record["name"] for record in node_run["stale"]] == ["kube-apiserver"]
    assert os.path.join(cluster.ssl("10.0.0.1"), "kube-apiserver.pem") in node_run["msg"]
    assert node_run["summary"]["counts"]["OK"] == node_run["summary"]["total"]
    rc, current_node = run_module(str(tmp_path), {"distribution": "rke1", "rkestate_expected": expected,
                                                  "data_dir": apiserver_rotated.data_dir("10.0.0.1"),
                                                  "fail_on_stale": True})
    assert rc == 0 and current_node["stale"] == []


def test_cert_check_refuses_a_missing_or_foreign_state_file(tmp_path):
    missing = str(tmp_path / "cluster.rkestate")
    rc, result = run_module(str(tmp_path), {"distribution": "rke1", "rkestate": missing})
    assert rc != 0 and missing in result["msg"] and "rke up" in result["msg"]
    with open(missing, "w") as handle:
        handle.write('{"nodes": []}')
    rc, result = run_module(str(tmp_path), {"distribution": "rke1", "rkestate": missing})
    assert rc != 0 and "not a cluster.rkestate" in result["msg"]
    rc, result = run_module(str(tmp_path), {"distribution": "kubeadm", "rkestate": missing})
    assert rc != 0 and "needs distribution=rke1" in result["msg"]
