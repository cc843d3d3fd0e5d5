# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Units of the expiry engine: statuses, keys, signers, sorting, kubeconfigs (with and without PyYAML)."""

from __future__ import annotations

import base64
import datetime
import json
import os

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import expiry, expiry_examination, expiry_report, kubeconfig
from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
    build_ca_certificate,
    build_leaf_certificate,
    dump_certificates,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import (
    generate_private_key,
    serialize_private_key,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import get_layout

NOW = datetime.datetime(2031, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


# ------------------------------------------------------------------------------------------------ builders

class Issued:
    def __init__(self, certificate, key, bundle=()):
        self.certificate = certificate
        self.key = key
        self.bundle = list(bundle)

    @property
    def pem(self) -> bytes:
        return dump_certificates([self.certificate] + self.bundle)

    @property
    def key_pem(self) -> bytes:
        return serialize_private_key(self.key)


def make_ca(cn, *, issuer=None, days=3650, now=NOW):
    key = generate_private_key("ecdsa-p256")
    cert = build_ca_certificate(subject_common_name=cn, subject_public_key=key.public_key(),
                                issuer_certificate=issuer.certificate if issuer else None,
                                issuer_key=issuer.key if issuer else key, validity_days=days, now=now)
    return Issued(cert, key)


def make_leaf(cn, issuer, *, days=365, now=NOW, server=False, bundle=True, organizations=()):
    key = generate_private_key("ecdsa-p256")
    cert = build_leaf_certificate(subject_common_name=cn, subject_public_key=key.public_key(),
                                  issuer_certificate=issuer.certificate, issuer_key=issuer.key,
                                  validity_days=days, server_auth=server, client_auth=True,
                                  organizations=organizations, now=now)
    return Issued(cert, key, [issuer.certificate] if bundle else [])


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def write_pair(directory, cert_name, key_name, issued) -> None:
    write(os.path.join(directory, cert_name), issued.pem)
    if key_name:
        write(os.path.join(directory, key_name), issued.key_pem)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def kubeconfig_text(*, cluster, user, ca_pem, cert_pem, key_pem, indent_lists=False, quote=False) -> str:
    dash = "  - " if indent_lists else "- "
    body = "    " if indent_lists else "  "
    q = '"' if quote else ""
    return "\n".join([
        "apiVersion: v1",
        "# written for tests",
        "clusters:",
        dash + "cluster:",
        body + "  certificate-authority-data: %s%s%s" % (q, b64(ca_pem), q),
        body + "  server: https://127.0.0.1:6443",
        body + "name: %s" % cluster,
        "contexts:",
        dash + "context:",
        body + "  cluster: %s" % cluster,
        body + "  user: %s" % user,
        body + "name: %s@%s" % (user, cluster),
        "current-context: %s@%s" % (user, cluster),
        "kind: Config",
        "preferences: {}",
        "users:",
        dash + "name: %s" % user,
        body + "user:",
        body + "  client-certificate-data: %s%s%s" % (q, b64(cert_pem), q),
        body + "  client-key-data: %s   # embedded" % b64(key_pem),
        "",
    ])


@pytest.fixture(scope="module")
def k3s_set():
    """CAs and leaves of a k3s server (EC keys are quick), built once."""
    cas = {
        "server-ca": make_ca("k3s-server-ca@1"),
        "client-ca": make_ca("k3s-client-ca@1"),
        "request-header-ca": make_ca("k3s-request-header-ca@1"),
        "etcd-server-ca": make_ca("etcd-server-ca@1"),
        "etcd-peer-ca": make_ca("etcd-peer-ca@1"),
    }
    layout = get_layout("k3s", data_dir="/nonexistent")
    leaves = {}
    for leaf in layout.leaves:
        leaves[leaf.cert] = make_leaf(os.path.basename(leaf.cert)[:-4], cas[leaf.ca],
                                      server=leaf.cert.startswith("serving"))
    return cas, leaves


def build_k3s(root, k3s_set, *, skip=()):
    cas, leaves = k3s_set
    layout = get_layout("k3s", data_dir=str(root))
    for ca in layout.cas:
        if ca.cert not in skip:
            write(layout.tls_path(ca.cert), cas[ca.name].pem)
            write(layout.tls_path(ca.key), cas[ca.name].key_pem)
    for leaf in layout.leaves:
        if leaf.cert not in skip:
            write(layout.tls_path(leaf.cert), leaves[leaf.cert].pem)
            write(layout.tls_path(leaf.key), leaves[leaf.cert].key_pem)
    return layout


def by_path(result, path):
    matches = [e for e in result["certificates"] if e["path"] == path and not e["kubeconfig_entry"]]
    assert len(matches) == 1, [e["path"] for e in result["certificates"]]
    return matches[0]


def assert_sorted(entries):
    keys = [expiry_report.sort_key(e) for e in entries]
    assert keys == sorted(keys)
    ranks = [k[0] for k in keys]
    assert ranks == sorted(ranks)


# ------------------------------------------------------------------------------------------------ helpers

def test_days_left_floors_both_ways():
    assert expiry_examination.days_left(NOW + datetime.timedelta(days=2, hours=23), now=NOW) == 2
    assert expiry_examination.days_left(NOW - datetime.timedelta(hours=1), now=NOW) == -1
    assert expiry_examination.days_left(NOW, now=NOW) == 0


def test_serial_hex_even_upper():
    assert expiry_examination.serial_hex(0) == "00"
    assert expiry_examination.serial_hex(0xABC) == "0ABC"
    assert expiry_examination.serial_hex(255) == "FF"


def test_as_utc_accepts_naive():
    naive = datetime.datetime(2030, 1, 1, 0, 0, 0)
    assert expiry_examination.as_utc(naive).tzinfo is not None
    assert expiry_examination.as_utc(naive) == datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


# ------------------------------------------------------------------------------------------------ k3s

def test_k3s_all_ok(tmp_path, k3s_set):
    layout = build_k3s(tmp_path, k3s_set)
    result = expiry.check_expiration(layout, warn_days=30, now=NOW + DAY)
    entries = result["certificates"]
    assert {e["status"] for e in entries} == {"OK"}
    assert len(entries) == len(layout.cas) + len(layout.leaves)
    assert result["summary"]["counts"]["OK"] == len(entries)
    assert result["summary"]["total"] == len(entries)
    tls = layout.tls_dir
    admin = by_path(result, os.path.join(tls, "client-admin.crt"))
    assert admin["source"] == "certificate"
    assert admin["signed_by"] == os.path.join(tls, "client-ca.crt")
    assert admin["chain_length"] == 2
    assert admin["key_file"] == os.path.join(tls, "client-admin.key")
    assert admin["key_matches"] is True
    assert admin["is_ca"] is False
    assert "client auth" in admin["usages"]
    assert admin["days_left"] == 364
    assert admin["not_after"].endswith("Z") and "T" in admin["not_after"]
    assert admin["subject"] == "CN=client-admin"
    assert admin["issuer"] == "CN=k3s-client-ca@1"
    assert admin["reason"] is None
    ca = by_path(result, os.path.join(tls, "server-ca.crt"))
    assert ca["signed_by"] == "self"
    assert ca["is_ca"] is True
    assert "cert sign" in ca["usages"]
    etcd_leaf = by_path(result, os.path.join(tls, "etcd", "peer-server-client.crt"))
    assert etcd_leaf["signed_by"] == os.path.join(tls, "etcd", "peer-ca.crt")
    serving = by_path(result, os.path.join(tls, "serving-kube-apiserver.crt"))
    assert serving["signed_by"] == os.path.join(tls, "server-ca.crt")
    assert "server auth" in serving["usages"]
    assert result["summary"]["soonest"]["days_left"] == 364
    assert_sorted(entries)
    assert os.path.join(tls, "etcd") in result["scanned_dirs"]


def test_k3s_warning_expired_not_yet_valid(tmp_path, k3s_set):
    cas, _leaves = k3s_set
    layout = build_k3s(tmp_path, k3s_set)
    tls = layout.tls_dir
    write_pair(tls, "client-admin.crt", "client-admin.key", make_leaf("system:admin", cas["client-ca"], days=20))
    write_pair(tls, "client-scheduler.crt", "client-scheduler.key",
               make_leaf("system:kube-scheduler", cas["client-ca"], now=NOW + 10 * DAY))
    result = expiry.check_expiration(layout, warn_days=30, now=NOW + DAY)
    warning = by_path(result, os.path.join(tls, "client-admin.crt"))
    assert warning["status"] == "WARNING"
    assert warning["days_left"] == 19
    assert "19 days" in warning["reason"]
    future = by_path(result, os.path.join(tls, "client-scheduler.crt"))
    assert future["status"] == "NOT_YET_VALID"
    assert "not valid before" in future["reason"]

    # Far in the future every leaf has expired, the 10-year CAs have not.
    later = expiry.check_expiration(layout, warn_days=30, now=NOW + 400 * DAY)
    expired = by_path(later, os.path.join(tls, "client-controller.crt"))
    assert expired["status"] == "EXPIRED"
    assert expired["days_left"] == -35
    assert "expired on" in expired["reason"]
    assert by_path(later, os.path.join(tls, "client-ca.crt"))["status"] == "OK"
    counts = later["summary"]["counts"]
    assert counts["EXPIRED"] == len(layout.leaves)
    assert later["summary"]["soonest"]["path"] == os.path.join(tls, "client-admin.crt")
    assert_sorted(later["certificates"])
    assert later["certificates"][0]["path"] == os.path.join(tls, "client-admin.crt")


def test_k3s_missing_and_invalid(tmp_path, k3s_set):
    layout = build_k3s(tmp_path, k3s_set, skip=("client-admin.crt", "etcd/peer-ca.crt"))
    tls = layout.tls_dir
    write(os.path.join(tls, "garbage.crt"), b"this is not a certificate\n")
    truncated = k3s_set[0]["server-ca"].pem[:200]
    write(os.path.join(tls, "truncated.crt"), truncated)
    write(os.path.join(tls, "empty.pem"), b"")
    write(os.path.join(tls, "client-controller.crt"), k3s_set[1]["client-controller.crt"].pem[:-100])
    result = expiry.check_expiration(layout, now=NOW + DAY)
    entries = result["certificates"]
    missing = [e for e in entries if e["status"] == "MISSING"]
    assert sorted(e["path"] for e in missing) == [os.path.join(tls, "client-admin.crt"),
                                                  os.path.join(tls, "etcd", "peer-ca.crt")]
    assert all("layout expects" in e["reason"] for e in missing)
    invalid = dict((e["path"], e) for e in entries if e["status"] == "INVALID")
    assert "no PEM certificate" in invalid[os.path.join(tls, "garbage.crt")]["reason"]
    assert "truncated" in invalid[os.path.join(tls, "truncated.crt")]["reason"]
    assert "empty" in invalid[os.path.join(tls, "empty.pem")]["reason"]
    assert invalid[os.path.join(tls, "garbage.crt")]["days_left"] is None
    # MISSING first, then INVALID, then the rest.
    statuses = [e["status"] for e in entries]
    assert statuses[:2] == ["MISSING", "MISSING"]
    assert statuses[2:5] == ["INVALID"] * 3
    assert result["summary"]["counts"]["MISSING"] == 2
    assert result["summary"]["counts"]["INVALID"] == 3
    # The etcd peer leaf's CA file is gone: no signer found, said in a note.
    cut_bundle = by_path(result, os.path.join(tls, "client-controller.crt"))
    assert cut_bundle["status"] == "OK" and cut_bundle["chain_length"] == 1
    assert any("incomplete" in note for note in cut_bundle["notes"])
    orphan = by_path(result, os.path.join(tls, "etcd", "peer-server-client.crt"))
    assert orphan["signed_by"] is None
    assert any("directly issued" in note for note in orphan["notes"])
    failing = expiry_report.threshold_failures(entries, fail_days=7)
    assert sorted(e["path"] for e in failing) == sorted(invalid)
    message = expiry_report.describe_failures(failing, fail_days=7)
    assert os.path.join(tls, "garbage.crt") in message and message.startswith("3 certificates")


def test_missing_needs_an_existing_directory(tmp_path, k3s_set):
    # An agent-only node: no server/tls, so nothing of the server layout is MISSING.
    layout = get_layout("k3s", data_dir=str(tmp_path))
    cas, leaves = k3s_set
    agent = os.path.join(str(tmp_path), "agent")
    write(os.path.join(agent, "server-ca.crt"), cas["server-ca"].pem)
    write(os.path.join(agent, "client-ca.crt"), cas["client-ca"].pem)
    write_pair(agent, "client-kubelet.crt", "client-kubelet.key", make_leaf("system:node:a", cas["client-ca"]))
    result = expiry.check_expiration(layout, now=NOW + DAY)
    assert {e["status"] for e in result["certificates"]} == {"OK"}
    server_ca = by_path(result, os.path.join(agent, "server-ca.crt"))
    assert server_ca["key_file"] is None and server_ca["key_matches"] is None
    kubelet = by_path(result, os.path.join(agent, "client-kubelet.crt"))
    assert kubelet["signed_by"] == os.path.join(agent, "client-ca.crt")
    assert kubelet["key_matches"] is True


def test_staged_ca_set_without_leaves(tmp_path, k3s_set):
    """CAs staged before the first start: the leaves k3s issues at start are not reported missing."""
    layout = get_layout("k3s", data_dir=str(tmp_path))
    build_k3s(tmp_path, k3s_set, skip=tuple(leaf.cert for leaf in layout.leaves) + ("etcd/peer-ca.crt",))
    result = expiry.check_expiration(layout, now=NOW + DAY)
    missing = [e["path"] for e in result["certificates"] if e["status"] == "MISSING"]
    assert missing == [os.path.join(layout.tls_dir, "etcd", "peer-ca.crt")]
    assert result["summary"]["counts"]["OK"] == len(layout.cas) - 1


def test_key_mismatch_and_bad_key(tmp_path, k3s_set):
    layout = build_k3s(tmp_path, k3s_set)
    tls = layout.tls_dir
    write(os.path.join(tls, "client-admin.key"), serialize_private_key(generate_private_key("ecdsa-p256")))
    write(os.path.join(tls, "client-controller.key"), b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")
    result = expiry.check_expiration(layout, now=NOW + DAY)
    admin = by_path(result, os.path.join(tls, "client-admin.crt"))
    assert admin["key_matches"] is False
    assert admin["status"] == "OK"
    assert any("does not belong" in note for note in admin["notes"])
    controller = by_path(result, os.path.join(tls, "client-controller.crt"))
    assert controller["key_matches"] is False
    assert any("cannot be parsed" in note for note in controller["notes"])
    # Nothing of the key leaks into the report.
    text = json.dumps(result)
    assert "PRIVATE KEY" not in text


def test_custom_ca_chain_signers(tmp_path):
    """generate-custom-ca-certs.sh layout: root and intermediate files in the tls dir, CA bundles."""
    root = make_ca("k3s-root-ca@1", days=7300)
    intermediate = make_ca("k3s-intermediate-ca@1", issuer=root, days=3700)
    server = make_ca("k3s-server-ca@1", issuer=intermediate)
    layout = get_layout("k3s", data_dir=str(tmp_path))
    tls = layout.tls_dir
    write(os.path.join(tls, "root-ca.pem"), root.pem)
    write(os.path.join(tls, "root-ca.key"), root.key_pem)
    write(os.path.join(tls, "intermediate-ca.pem"), intermediate.pem)
    write(os.path.join(tls, "intermediate-ca.key"), intermediate.key_pem)
    write(os.path.join(tls, "server-ca.pem"), server.pem)
    write(os.path.join(tls, "server-ca.crt"), dump_certificates([server.certificate, intermediate.certificate,
                                                                 root.certificate]))
    write(os.path.join(tls, "server-ca.key"), server.key_pem)
    result = expiry.check_expiration(layout, paths=[tls], only_paths=True, now=NOW + DAY)
    assert by_path(result, os.path.join(tls, "root-ca.pem"))["signed_by"] == "self"
    assert by_path(result, os.path.join(tls, "intermediate-ca.pem"))["signed_by"] == os.path.join(tls, "root-ca.pem")
    bundle = by_path(result, os.path.join(tls, "server-ca.crt"))
    assert bundle["signed_by"] == os.path.join(tls, "intermediate-ca.pem")
    assert bundle["chain_length"] == 3
    assert bundle["key_matches"] is True
    assert by_path(result, os.path.join(tls, "server-ca.pem"))["key_file"] == os.path.join(tls, "server-ca.key")
    assert not [e for e in result["certificates"] if e["status"] == "MISSING"]  # only_paths: no layout MISSING


def test_bundle_note_when_a_later_certificate_expires_first(tmp_path):
    root = make_ca("short-root", days=100)
    leaf_key = generate_private_key("ecdsa-p256")
    other = make_ca("other", days=3650)
    leaf = build_leaf_certificate(subject_common_name="leaf", subject_public_key=leaf_key.public_key(),
                                  issuer_certificate=other.certificate, issuer_key=other.key, validity_days=365,
                                  now=NOW)
    path = write(os.path.join(str(tmp_path), "bundle.crt"), dump_certificates([leaf, root.certificate]))
    layout = get_layout("kubeadm", data_dir=str(tmp_path / "none"))
    result = expiry.check_expiration(layout, paths=[path], only_paths=True, now=NOW + DAY)
    entry = result["certificates"][0]
    assert entry["chain_length"] == 2
    assert any("expires first" in note for note in entry["notes"])


# ------------------------------------------------------------------------------------------------ kubeadm + kubeconfigs

def build_kubeadm(root):
    layout = get_layout("kubeadm", data_dir=str(root))
    ca = make_ca("kubernetes")
    front = make_ca("front-proxy-ca")
    etcd = make_ca("etcd-ca")
    pki = layout.tls_dir
    for name, issued in (("ca", ca), ("front-proxy-ca", front), ("etcd/ca", etcd)):
        write_pair(pki, name + ".crt", name + ".key", issued)
    signers = {"ca": ca, "front-proxy-ca": front, "etcd-ca": etcd}
    for leaf in layout.leaves:
        write_pair(pki, leaf.cert, leaf.key,
                   make_leaf(os.path.basename(leaf.cert)[:-4], signers[leaf.ca], bundle=False))
    admin = make_leaf("kubernetes-admin", ca, bundle=False, organizations=("kubeadm:cluster-admins",))
    return layout, ca, admin


@pytest.mark.parametrize("use_yaml", [True, False])
def test_kubeadm_with_embedded_kubeconfig(tmp_path, use_yaml):
    layout, ca, admin = build_kubeadm(tmp_path)
    conf = write(os.path.join(str(tmp_path), "admin.conf"),
                 kubeconfig_text(cluster="kubernetes", user="kubernetes-admin", ca_pem=ca.pem, cert_pem=admin.pem,
                                 key_pem=admin.key_pem).encode())
    result = expiry.check_expiration(layout, now=NOW + DAY, use_yaml=use_yaml)
    entries = result["certificates"]
    # 3 CAs + 7 leaves + 2 kubeconfig entries; super-admin.conf etc. are absent and not reported.
    assert len(entries) == 12
    assert {e["status"] for e in entries} == {"OK"}
    user = [e for e in entries if e["kubeconfig_entry"] == "user/kubernetes-admin"][0]
    assert user["path"] == conf
    assert user["source"] == "kubeconfig"
    assert user["subject"] == "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    assert user["signed_by"] == conf + "#cluster/kubernetes"
    assert user["key_file"] == conf
    assert user["key_matches"] is True
    cluster = [e for e in entries if e["kubeconfig_entry"] == "cluster/kubernetes"][0]
    assert cluster["signed_by"] == "self"
    assert cluster["is_ca"] is True
    report = result["kubeconfigs"][0]
    assert report["embedded"] is True
    assert report["users"] == ["kubernetes-admin"]
    assert report["clusters"] == ["kubernetes"]
    assert report["referenced_files"] == []
    pki = layout.tls_dir
    assert by_path(result, os.path.join(pki, "apiserver-etcd-client.crt"))["signed_by"] == \
        os.path.join(pki, "etcd", "ca.crt")
    assert by_path(result, os.path.join(pki, "apiserver.crt"))["signed_by"] == os.path.join(pki, "ca.crt")
    assert "PRIVATE KEY" not in json.dumps(result)


def test_kubeadm_without_pyyaml_module(tmp_path, monkeypatch):
    layout, ca, admin = build_kubeadm(tmp_path)
    write(os.path.join(str(tmp_path), "scheduler.conf"),
          kubeconfig_text(cluster="kubernetes", user="system:kube-scheduler", ca_pem=ca.pem, cert_pem=admin.pem,
                          key_pem=admin.key_pem, indent_lists=True, quote=True).encode())
    monkeypatch.setattr(kubeconfig, "yaml", None)
    result = expiry.check_expiration(layout, now=NOW + DAY)
    user = [e for e in result["certificates"] if e["kubeconfig_entry"] == "user/system:kube-scheduler"]
    assert len(user) == 1 and user[0]["status"] == "OK" and user[0]["key_matches"] is True


def test_kubeconfig_referencing_files(tmp_path):
    layout, ca, admin = build_kubeadm(tmp_path)
    kubelet_pki = os.path.join(str(tmp_path), "kubelet-pki")
    # The kubelet's rotated client cert: certificate and key in one file.
    current = write(os.path.join(kubelet_pki, "kubelet-client-current.pem"), admin.pem + admin.key_pem)
    text = "\n".join([
        "apiVersion: v1",
        "clusters:",
        "- cluster:",
        "    certificate-authority-data: %s" % b64(ca.pem),
        "    server: https://10.0.0.1:6443",
        "  name: kubernetes",
        "users:",
        "- name: system:node:cp1",
        "  user:",
        "    client-certificate: %s" % current,
        "    client-key: %s" % current,
        "",
    ])
    conf = write(os.path.join(str(tmp_path), "kubelet.conf"), text.encode())
    for use_yaml in (True, False):
        result = expiry.check_expiration(layout, now=NOW + DAY, use_yaml=use_yaml)
        report = [r for r in result["kubeconfigs"] if r["path"] == conf][0]
        assert report["referenced_files"] == [current, current]
        assert report["error"] is None
        entry = by_path(result, current)
        assert entry["status"] == "OK"
        assert entry["key_file"] == current and entry["key_matches"] is True
        assert entry["signed_by"] == os.path.join(layout.tls_dir, "ca.crt")
        assert any("referenced by kubeconfig" in note for note in entry["notes"])
        assert not [e for e in result["certificates"] if e["status"] != "OK"]


def test_kubeconfig_reference_to_absent_file_is_missing(tmp_path):
    conf = write(os.path.join(str(tmp_path), "x.kubeconfig"), b"\n".join([
        b"apiVersion: v1", b"clusters:", b"- cluster:", b"    certificate-authority: ca.crt", b"  name: c",
        b"users:", b"- name: u", b"  user:", b"    client-certificate: u.crt", b"    client-key: u.key", b""]))
    layout = get_layout("rke1", data_dir=str(tmp_path / "none"))
    result = expiry.check_expiration(layout, paths=[conf], only_paths=True, now=NOW)
    missing = sorted(e["path"] for e in result["certificates"] if e["status"] == "MISSING")
    assert missing == sorted(os.path.join(str(tmp_path), name) for name in ("ca.crt", "u.crt", "u.key"))
    assert result["kubeconfigs"][0]["embedded"] is False


def test_broken_kubeconfig_is_invalid(tmp_path):
    layout, ca, admin = build_kubeadm(tmp_path)
    good = kubeconfig_text(cluster="k", user="u", ca_pem=ca.pem, cert_pem=admin.pem, key_pem=admin.key_pem)
    write(os.path.join(str(tmp_path), "admin.conf"), good.replace(b64(admin.pem), "not-base64@@").encode())
    write(os.path.join(str(tmp_path), "scheduler.conf"), b"clusters: [unclosed\n")
    result = expiry.check_expiration(layout, now=NOW + DAY)
    invalid = [e for e in result["certificates"] if e["status"] == "INVALID"]
    reasons = dict(((e["path"], e["kubeconfig_entry"]), e["reason"]) for e in invalid)
    assert "base64" in reasons[(os.path.join(str(tmp_path), "admin.conf"), "user/u")]
    assert "not valid YAML" in reasons[(os.path.join(str(tmp_path), "scheduler.conf"), None)]
    assert invalid[0]["source"] == "kubeconfig"


# ------------------------------------------------------------------------------------------------ kubeconfig parser

def test_parse_kubeconfig_line_reader_matches_yaml(k3s_set):
    ca = k3s_set[0]["server-ca"]
    leaf = k3s_set[1]["client-admin.crt"]
    for indent_lists in (False, True):
        text = kubeconfig_text(cluster="default", user="default", ca_pem=ca.pem, cert_pem=leaf.pem,
                               key_pem=leaf.key_pem, indent_lists=indent_lists, quote=indent_lists)
        assert kubeconfig.parse_kubeconfig(text, use_yaml=False) == kubeconfig.parse_kubeconfig(text, use_yaml=True)


def test_parse_kubeconfig_line_reader_details():
    text = "\n".join([
        "apiVersion: v1",
        "clusters:",
        "- name: first",
        "  cluster:",
        "    server: 'https://a:6443'",
        "    certificate-authority: /etc/ca.crt",
        "- cluster:",
        "    certificate-authority-data: QUJD",
        "      REVG",
        "  name: \"second\"",
        "users:",
        "- name: exec-user",
        "  user:",
        "    exec:",
        "      command: foo",
        "      env:",
        "      - name: NOT_A_USER",
        "        value: x",
        "- name: plain",
        "  user:",
        "    client-certificate: rel/client.crt",
        "",
    ])
    parsed = kubeconfig.parse_kubeconfig(text, use_yaml=False)
    assert [c["name"] for c in parsed["clusters"]] == ["first", "second"]
    assert parsed["clusters"][0]["server"] == "https://a:6443"
    assert parsed["clusters"][0]["certificate-authority"] == "/etc/ca.crt"
    assert parsed["clusters"][1]["certificate-authority-data"] == "QUJDREVG"
    assert [u["name"] for u in parsed["users"]] == ["exec-user", "plain"]
    assert parsed["users"][1]["client-certificate"] == "rel/client.crt"
    assert parsed["users"][0]["client-certificate"] is None


def test_parse_kubeconfig_json_and_rejects():
    data = {"apiVersion": "v1", "clusters": [{"name": "c", "cluster": {"certificate-authority-data": "QUJD"}}],
            "users": [{"name": "u", "user": {"client-certificate-data": "REVG"}}]}
    parsed = kubeconfig.parse_kubeconfig(json.dumps(data), use_yaml=False)
    assert parsed["clusters"][0]["certificate-authority-data"] == "QUJD"
    assert parsed["users"][0]["client-certificate-data"] == "REVG"
    with pytest.raises(InvalidInputError):
        kubeconfig.parse_kubeconfig("just some text\n", use_yaml=False)
    with pytest.raises(InvalidInputError):
        kubeconfig.parse_kubeconfig("- a\n- b\n", use_yaml=True)


def test_looks_like_kubeconfig():
    assert kubeconfig.looks_like_kubeconfig(b"apiVersion: v1\nclusters:\n- name: x\n")
    assert kubeconfig.looks_like_kubeconfig(b'{"clusters": []}')
    assert not kubeconfig.looks_like_kubeconfig(b"-----BEGIN CERTIFICATE-----\nclusters:\n")
    assert not kubeconfig.looks_like_kubeconfig(b"key: value\n")


# ------------------------------------------------------------------------------------------------ rke1

def test_rke1_ssl_dir(tmp_path):
    layout = get_layout("rke1", data_dir=str(tmp_path))
    ssl = layout.tls_dir
    kube_ca = make_ca("kube-ca")
    header_ca = make_ca("kube-apiserver-requestheader-ca")
    write_pair(ssl, "kube-ca.pem", "kube-ca-key.pem", kube_ca)
    write_pair(ssl, "kube-apiserver-requestheader-ca.pem", "kube-apiserver-requestheader-ca-key.pem", header_ca)
    write_pair(ssl, "kube-node.pem", "kube-node-key.pem", make_leaf("system:node", kube_ca, bundle=False))
    write_pair(ssl, "kube-apiserver-proxy-client.pem", "kube-apiserver-proxy-client-key.pem",
               make_leaf("system:kube-apiserver-proxy-client", header_ca, bundle=False))
    write_pair(ssl, "kube-etcd-10-0-0-1.pem", "kube-etcd-10-0-0-1-key.pem",
               make_leaf("system:kube-etcd-10-0-0-1", kube_ca, bundle=False, days=10))
    write(os.path.join(ssl, "kube-etcd-10-0-0-1-csr.pem"), b"-----BEGIN CERTIFICATE REQUEST-----\n")
    write(os.path.join(ssl, "kube-service-account-token-key.pem"),
          serialize_private_key(generate_private_key("ecdsa-p256")))
    kubecfg = "\n".join([
        "apiVersion: v1", "kind: Config", "clusters:", "- cluster:",
        "    api-version: v1", "    certificate-authority: %s" % os.path.join(ssl, "kube-ca.pem"),
        "    server: \"https://127.0.0.1:6443\"", "  name: \"local\"", "users:", "- name: \"kube-node\"",
        "  user:", "    client-certificate: %s" % os.path.join(ssl, "kube-node.pem"),
        "    client-key: %s" % os.path.join(ssl, "kube-node-key.pem"), ""])
    write(os.path.join(ssl, "kubecfg-kube-node.yaml"), kubecfg.encode())
    result = expiry.check_expiration(layout, paths=[os.path.join(ssl, "kubecfg-kube-node.yaml")], warn_days=30,
                                     now=NOW + DAY)
    paths = [e["path"] for e in result["certificates"]]
    assert sorted(os.path.basename(p) for p in paths) == sorted([
        "kube-ca.pem", "kube-apiserver-requestheader-ca.pem", "kube-node.pem", "kube-apiserver-proxy-client.pem",
        "kube-etcd-10-0-0-1.pem"])
    first = result["certificates"][0]
    assert os.path.basename(first["path"]) == "kube-etcd-10-0-0-1.pem"
    assert first["status"] == "WARNING" and first["days_left"] == 9
    node = by_path(result, os.path.join(ssl, "kube-node.pem"))
    assert node["key_file"] == os.path.join(ssl, "kube-node-key.pem") and node["key_matches"] is True
    assert node["signed_by"] == os.path.join(ssl, "kube-ca.pem")
    proxy = by_path(result, os.path.join(ssl, "kube-apiserver-proxy-client.pem"))
    assert proxy["signed_by"] == os.path.join(ssl, "kube-apiserver-requestheader-ca.pem")
    assert result["kubeconfigs"][0]["embedded"] is False
    assert result["summary"]["counts"] == {"MISSING": 0, "INVALID": 0, "EXPIRED": 0, "NOT_YET_VALID": 0,
                                           "WARNING": 1, "OK": 4}
    failing = expiry_report.threshold_failures(result["certificates"], fail_days=10)
    assert [os.path.basename(e["path"]) for e in failing] == ["kube-etcd-10-0-0-1.pem"]


# ------------------------------------------------------------------------------------------------ paths

def test_only_paths_with_files_dirs_and_absent(tmp_path, k3s_set):
    cas, leaves = k3s_set
    extra = os.path.join(str(tmp_path), "extra")
    one = write(os.path.join(extra, "one.cer"), leaves["client-admin.crt"].pem)
    write(os.path.join(extra, "notes.txt"), b"ignored")
    write(os.path.join(extra, "one-key.pem"), leaves["client-admin.crt"].key_pem)
    both = write(os.path.join(extra, "kubelet-client-current.pem"),
                 leaves["client-kube-proxy.crt"].pem + leaves["client-kube-proxy.crt"].key_pem)
    odd = write(os.path.join(str(tmp_path), "cert-without-suffix"), cas["client-ca"].pem)
    layout = get_layout("k3s", data_dir=str(tmp_path / "none"))
    result = expiry.check_expiration(layout, paths=[extra, odd, str(tmp_path / "nope.crt")], only_paths=True,
                                     now=NOW + DAY)
    by = dict((e["path"], e) for e in result["certificates"])
    assert set(by) == {one, both, odd, os.path.join(str(tmp_path), "nope.crt")}
    assert by[both]["key_file"] == both and by[both]["key_matches"] is True
    assert by[one]["key_file"] is None  # one.cer has no key rule; one-key.pem is not examined as a certificate
    assert by[os.path.join(str(tmp_path), "nope.crt")]["status"] == "MISSING"
    assert by[one]["signed_by"] == odd  # a CA found anywhere among the examined files
    assert result["scanned_dirs"] == [extra]


def test_summary_of_nothing():
    summary = expiry_report.summarize([], warn_days=30, now=NOW)
    assert summary["total"] == 0 and summary["soonest"] is None
    assert summary["checked_at"] == "2031-03-01T12:00:00Z"
    assert set(summary["counts"]) == set(expiry_report.STATUSES)


# ------------------------------------------------------------------------------------------------ unchained leaves

def test_unchained_leaves_lists_only_leaves_no_examined_ca_issued(tmp_path, k3s_set):
    """After a rotation a leaf still issued by the replaced CA chains to nothing on the node."""
    cas, leaves = k3s_set
    layout = build_k3s(tmp_path, k3s_set, skip=("client-admin.crt",))
    tls = layout.tls_dir
    replaced = make_ca("k3s-client-ca@0")  # the CA a rotation replaced: no file of it is left
    write_pair(tls, "client-controller.crt", "client-controller.key",
               make_leaf("system:kube-controller-manager", replaced))
    # A leaf (CA:false) signed by its own key.
    self_key = generate_private_key("ecdsa-p256")
    stand_in = build_ca_certificate(subject_common_name="self-signed-leaf", subject_public_key=self_key.public_key(),
                                    issuer_certificate=None, issuer_key=self_key, validity_days=3650, now=NOW)
    self_signed = build_leaf_certificate(subject_common_name="self-signed-leaf",
                                         subject_public_key=self_key.public_key(), issuer_certificate=stand_in,
                                         issuer_key=self_key, validity_days=365, server_auth=True, now=NOW)
    write(os.path.join(tls, "self-signed.crt"), dump_certificates([self_signed]))
    # An intermediate CA whose issuer is nowhere on the node: unchained, but a CA.
    orphan_root = make_ca("orphan-root")
    write(os.path.join(tls, "orphan-intermediate.crt"), make_ca("orphan-intermediate", issuer=orphan_root).pem)
    write(os.path.join(tls, "garbage.crt"), b"not a certificate\n")
    result = expiry.check_expiration(layout, now=NOW + DAY)
    entries = result["certificates"]

    # The entries the rule must ignore really are what the test intends.
    assert by_path(result, os.path.join(tls, "self-signed.crt"))["signed_by"] == "self"
    assert by_path(result, os.path.join(tls, "self-signed.crt"))["is_ca"] is False
    orphan = by_path(result, os.path.join(tls, "orphan-intermediate.crt"))
    assert orphan["is_ca"] is True and orphan["signed_by"] is None
    assert by_path(result, os.path.join(tls, "client-admin.crt"))["status"] == "MISSING"
    assert by_path(result, os.path.join(tls, "garbage.crt"))["status"] == "INVALID"
    assert by_path(result, os.path.join(tls, "garbage.crt"))["signed_by"] is None
    assert by_path(result, os.path.join(tls, "client-ca.crt"))["signed_by"] == "self"

    unchained = expiry_report.unchained_leaves(entries)
    assert [e["path"] for e in unchained] == [os.path.join(tls, "client-controller.crt")]
    assert unchained[0]["issuer"] == "CN=k3s-client-ca@0"


def test_unchained_leaves_none_on_a_healthy_node(tmp_path, k3s_set):
    layout = build_k3s(tmp_path, k3s_set)
    result = expiry.check_expiration(layout, now=NOW + DAY)
    assert len(result["certificates"]) == len(layout.cas) + len(layout.leaves)
    assert expiry_report.unchained_leaves(result["certificates"]) == []
    assert expiry_report.unchained_leaves([]) == []
