# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The CA sets written by ``kubepki.certs.ca_chain``, judged by the openssl CLI.

Every CA must pass ``openssl verify -x509_strict``; leaves issued with ``openssl x509 -req`` under the
cluster CAs must verify for the right purpose and only for it; certificates of an unrelated CA must be
rejected; keys must pass ``openssl pkey -check`` and match their certificates.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import re
import stat

import pytest

from interop_lib import pem_certs, write_text

KEY_HEADERS = {
    ("traditional", "rsa"): "-----BEGIN RSA PRIVATE KEY-----",
    ("traditional", "ec"): "-----BEGIN EC PRIVATE KEY-----",
    ("pkcs8", "rsa"): "-----BEGIN PRIVATE KEY-----",
    ("pkcs8", "ec"): "-----BEGIN PRIVATE KEY-----",
}


def _assert_verify_ok(result, what):
    assert result.returncode == 0 and result.stdout.rstrip().endswith(": OK"), (
        "openssl verify rejected %s:\n%s%s" % (what, result.stdout, result.stderr))


def _assert_verify_fails(result, what, expected=None):
    assert result.returncode != 0, "openssl verify ACCEPTED %s, which must be rejected:\n%s" % (what, result.stdout)
    if expected:
        assert re.search(expected, result.stdout + result.stderr), (
            "openssl verify rejected %s, but not with %r:\n%s%s" % (what, expected, result.stdout, result.stderr))


def _key_kind(openssl, key_path):
    text = openssl("pkey", "-in", key_path, "-noout", "-text").stdout
    if "ASN1 OID:" in text or "NIST CURVE:" in text:
        curve = re.search(r"NIST CURVE: (P-\d+)", text)
        return "ec", "ecdsa-%s" % curve.group(1).replace("-", "").lower() if curve else "ec-unknown"
    bits = re.search(r"Private-Key: \((\d+) bit", text)
    return "rsa", "rsa-%s" % (bits.group(1) if bits else "?")


def test_module_reports_every_file(scenario):
    """The run changed something, and every reported file exists with the reported mode."""
    assert scenario.result["changed"] is True
    reported = {entry["path"]: entry for entry in scenario.result["files"]}
    expected = [scenario.ca_bundle(ca) for ca in scenario.ca_names()] + scenario.key_files()
    if scenario.rancher:
        expected += [scenario.file(ca + ".pem") for ca in scenario.ca_names()]
        expected += [scenario.file(name) for name in ("root-ca.pem", "root-ca.crt", "intermediate-ca.pem",
                                                      "intermediate-ca.crt")]
    else:
        expected.append(scenario.file("sa.pub"))
    missing = [path for path in expected if path not in reported]
    assert not missing, "files not reported by the module: %s" % missing
    for path, entry in reported.items():
        assert os.path.isfile(path), "reported file %s does not exist" % path
        assert "%04o" % stat.S_IMODE(os.stat(path).st_mode) == entry["mode"], path


def test_rerun_changes_nothing(module_runs):
    first = module_runs["k3s-ec"]
    again = module_runs["_rerun"]
    assert not again.get("failed"), again
    assert again["changed"] is False, [f for f in again["files"] if f["state"] != "unchanged"]
    assert again["token_ca_hash"] == first.result["token_ca_hash"]
    assert {n: c["fingerprint_sha256"] for n, c in again["cas"].items()} == \
        {n: c["fingerprint_sha256"] for n, c in first.result["cas"].items()}


def test_openssl_verifies_every_ca_strictly(scenario, openssl):
    failures = []
    targets = [(ca, scenario.ca_alone(ca)) for ca in scenario.ca_names()]
    if scenario.rancher:
        targets += [("root-ca", scenario.file("root-ca.pem")), ("intermediate-ca", scenario.file("intermediate-ca.pem"))]
    for name, cert in targets:
        result = openssl.verify(cert, cafile=scenario.trust_root(name), untrusted=scenario.intermediates_for(name))
        if result.returncode != 0 or not result.stdout.rstrip().endswith(": OK"):
            failures.append("%s: %s%s" % (name, result.stdout, result.stderr))
    assert not failures, "openssl verify -x509_strict rejected:\n" + "\n".join(failures)


def test_openssl_leaf_purposes(scenario, openssl, tmp_path):
    """Server and client leaves issued under server-ca/client-ca verify for their purpose, and only for it."""
    work = str(tmp_path)
    server_ca, client_ca = scenario.role("server"), scenario.role("client")
    server_cert, _key = openssl.leaf(work, "server", issuer_cert=scenario.ca_alone(server_ca),
                                     issuer_key=scenario.ca_key(server_ca), cn="kube-apiserver", server=True,
                                     client=False, dns=("localhost", "kubernetes.default.svc"), ips=("127.0.0.1",))
    client_cert, _key = openssl.leaf(work, "client", issuer_cert=scenario.ca_alone(client_ca),
                                     issuer_key=scenario.ca_key(client_ca), cn="kubernetes-admin",
                                     orgs=("system:masters",))
    # untrusted = the issuing CA plus the intermediate, as a peer sends them
    for ca, cert, good, bad in ((server_ca, server_cert, "sslserver", "sslclient"),
                                (client_ca, client_cert, "sslclient", "sslserver")):
        chain = scenario.untrusted_for(ca)
        _assert_verify_ok(openssl.verify(cert, cafile=scenario.trust_root(ca), untrusted=chain, purpose=good),
                          "%s leaf under %s for %s" % (good, ca, good))
        _assert_verify_fails(openssl.verify(cert, cafile=scenario.trust_root(ca), untrusted=chain, purpose=bad),
                             "%s leaf for purpose %s" % (good, bad), r"unsuitable certificate purpose|error 26")
        # Trusting the <ca>.crt bundle itself (what peers are configured with) works too.
        _assert_verify_ok(openssl.verify(cert, cafile=scenario.ca_bundle(ca), purpose=good),
                          "%s leaf against the %s.crt bundle" % (good, ca))


def test_openssl_leaf_under_every_ca(scenario, openssl, tmp_path):
    """Every cluster CA can issue a working leaf (server+client EKU), anchored at the root."""
    failures = []
    for index, ca in enumerate(scenario.ca_names()):
        cert, _key = openssl.leaf(str(tmp_path), "leaf%d" % index, issuer_cert=scenario.ca_alone(ca),
                                  issuer_key=scenario.ca_key(ca), cn="leaf-of-%s" % ca.replace("/", "-"), server=True, client=True,
                                  dns=("localhost",))
        result = openssl.verify(cert, cafile=scenario.trust_root(ca), untrusted=scenario.untrusted_for(ca),
                                purpose="sslserver")
        if result.returncode != 0:
            failures.append("%s: %s%s" % (ca, result.stdout, result.stderr))
    assert not failures, "\n".join(failures)


def test_openssl_rejects_foreign_ca(scenario, openssl, tmp_path):
    """A leaf of an unrelated CA with an identical name must not verify against the set; and vice versa."""
    work = str(tmp_path)
    server_ca = scenario.role("server")
    foreign_cert, leaf = scenario.foreign_lookalike(server_ca, work)
    _assert_verify_fails(openssl.verify(leaf, cafile=scenario.ca_bundle(server_ca), purpose="sslserver"),
                         "a leaf of a foreign CA named like %s" % server_ca,
                         r"signature failure|unable to get local issuer|certificate signature failure|error 7|error 20")
    ours, _key = openssl.leaf(work, "our-leaf", issuer_cert=scenario.ca_alone(server_ca),
                              issuer_key=scenario.ca_key(server_ca), cn="kube-apiserver", server=True)
    _assert_verify_fails(openssl.verify(ours, cafile=foreign_cert, purpose="sslserver"),
                         "our leaf against a foreign root")


def test_bundles_and_chain_links(scenario, openssl):
    """<ca>.crt = CA, intermediate, root (k3s/RKE2); kubeadm ca.crt = CA (+ supplied root)."""
    def subject_issuer(block):
        out = openssl("x509", "-noout", "-subject", "-issuer", "-nameopt", "RFC2253", input_data=block).stdout
        values = dict(line.split("=", 1) for line in out.strip().splitlines())
        return values["subject"], values["issuer"]

    for ca in scenario.ca_names():
        bundle = pem_certs(scenario.ca_bundle(ca))
        if scenario.rancher:
            expected = (pem_certs(scenario.file(ca + ".pem")) + pem_certs(scenario.file("intermediate-ca.pem")) +
                        pem_certs(scenario.file("root-ca.pem")))
            assert bundle == expected, "%s.crt is not %s.pem + intermediate-ca.pem + root-ca.pem" % (ca, ca)
        elif scenario.has_root:
            assert bundle[1:] == pem_certs(scenario.root_file()), "%s.crt must end with the supplied root" % ca
        else:
            assert len(bundle) == 1, "self-signed kubeadm %s.crt must hold one certificate" % ca
        names = [subject_issuer(block) for block in bundle]
        for (_subject, issuer), (parent_subject, _parent_issuer) in zip(names, names[1:]):
            assert issuer == parent_subject, "%s.crt is out of order: %s" % (ca, names)
        assert names[-1][0] == names[-1][1], "%s.crt does not end with a self-signed certificate: %s" % (ca, names)
    if scenario.rancher:
        assert pem_certs(scenario.file("root-ca.crt")) == pem_certs(scenario.file("root-ca.pem"))
        assert pem_certs(scenario.file("intermediate-ca.crt")) == (pem_certs(scenario.file("intermediate-ca.pem")) +
                                                                   pem_certs(scenario.file("root-ca.pem")))


def test_reported_fingerprints_and_dates(scenario, openssl):
    entries = dict(scenario.result["cas"])
    for label in ("root", "intermediate"):
        if scenario.result.get(label):
            entries[label] = scenario.result[label]
    assert len(entries) >= len(scenario.ca_names())
    for name, entry in entries.items():
        first = pem_certs(entry["cert"])[0]
        out = openssl("x509", "-noout", "-fingerprint", "-sha256", "-enddate", "-startdate", input_data=first).stdout
        values = dict(line.split("=", 1) for line in out.strip().splitlines())
        assert values["sha256 Fingerprint"] == entry["fingerprint_sha256"], name
        end = datetime.datetime.strptime(values["notAfter"], "%b %d %H:%M:%S %Y GMT")
        assert end.strftime("%Y-%m-%dT%H:%M:%SZ") == entry["not_after"], name
        start = datetime.datetime.strptime(values["notBefore"], "%b %d %H:%M:%S %Y GMT")
        assert start.strftime("%Y-%m-%dT%H:%M:%SZ") == entry["not_before"], name


def test_path_length_constraints(scenario, openssl, go_verifier, tmp_path):
    """pathlen root 2 / intermediate 1 / cluster CAs 0 when constrained, none otherwise; enforced by both verifiers."""
    def pathlen(cert):
        out = openssl("x509", "-noout", "-ext", "basicConstraints", "-in", cert).stdout
        assert "CA:TRUE" in out, "%s is not a CA: %s" % (cert, out)
        found = re.search(r"pathlen:(\d+)", out)
        return int(found.group(1)) if found else None

    want_ca = 0 if scenario.constrained else None
    for ca in scenario.ca_names():
        assert pathlen(scenario.ca_alone(ca)) == want_ca, ca
    if scenario.rancher and scenario.result["root"]["generated"]:
        assert pathlen(scenario.file("root-ca.pem")) == (2 if scenario.constrained else None)
    if scenario.rancher and scenario.result["intermediate"]["generated"]:
        assert pathlen(scenario.file("intermediate-ca.pem")) == (1 if scenario.constrained else None)

    # A sub-CA minted with a cluster CA key: accepted only when the set is unconstrained.
    work = str(tmp_path)
    server_ca = scenario.role("server")
    sub_cert, sub_key = openssl.sub_ca(work, "rogue-sub-ca", cn="rogue-sub-ca", issuer_cert=scenario.ca_alone(server_ca),
                                       issuer_key=scenario.ca_key(server_ca))
    leaf, _key = openssl.leaf(work, "rogue-leaf", issuer_cert=sub_cert, issuer_key=sub_key, cn="rogue",
                              server=True, client=False, dns=("localhost",))
    untrusted = write_text(os.path.join(work, "rogue-untrusted.pem"),
                           pem_certs(sub_cert)[0] + "".join(pem_certs(scenario.ca_bundle(server_ca))))
    result = openssl.verify(leaf, cafile=scenario.trust_root(server_ca), untrusted=untrusted, purpose="sslserver")
    go_result = go_verifier.verify(leaf, roots=scenario.trust_root(server_ca), intermediates=untrusted, usage="server")
    if scenario.constrained:
        _assert_verify_fails(result, "a leaf under a sub-CA of a pathlen:0 %s" % server_ca,
                             r"path length constraint exceeded|error 25")
        assert go_result.returncode != 0 and "path length" in go_result.stderr, (
            "Go accepted a leaf under a sub-CA of a pathlen:0 CA:\n%s%s" % (go_result.stdout, go_result.stderr))
    else:
        _assert_verify_ok(result, "a leaf under a sub-CA of an unconstrained %s" % server_ca)
        assert go_result.returncode == 0, go_result.stderr


def test_keys_check_and_match(scenario, openssl):
    """Every key passes openssl's checks, has the requested format, matches its certificate, is 0600 root-owned."""
    failures = []
    for key_path in scenario.key_files():
        st = os.stat(key_path)
        if stat.S_IMODE(st.st_mode) != 0o600:
            failures.append("%s has mode %04o, want 0600" % (key_path, stat.S_IMODE(st.st_mode)))
        if st.st_uid != os.geteuid():
            failures.append("%s is owned by uid %d, want %d" % (key_path, st.st_uid, os.geteuid()))
        check = openssl("pkey", "-check", "-noout", "-in", key_path, check=False)
        if check.returncode != 0:
            failures.append("openssl pkey -check %s: %s" % (key_path, check.stderr))
        kind, _name = _key_kind(openssl, key_path)
        specific = openssl("rsa" if kind == "rsa" else "ec", "-check", "-noout", "-in", key_path, check=False)
        if specific.returncode != 0:
            failures.append("openssl %s -check %s: %s" % (kind, key_path, specific.stderr))
        with open(key_path, encoding="ascii") as handle:
            first_line = handle.readline().strip()
        want = KEY_HEADERS[(scenario.key_format, kind)]
        supplied = key_path == scenario.file("intermediate-ca.key") and "intermediate_key" in scenario.options
        # A supplied intermediate key is copied byte for byte (documented: existing keys keep their format).
        if first_line != want and not supplied:
            failures.append("%s starts with %r, want %r (key_format=%s)"
                            % (key_path, first_line, want, scenario.key_format))
    # Private key <-> certificate (CA alone) public keys.
    pairs = [(scenario.ca_key(ca), scenario.ca_alone(ca)) for ca in scenario.ca_names()]
    if scenario.rancher:
        pairs.append((scenario.file("intermediate-ca.key"), scenario.file("intermediate-ca.pem")))
        if os.path.exists(scenario.file("root-ca.key")):
            pairs.append((scenario.file("root-ca.key"), scenario.file("root-ca.pem")))
    for key_path, cert in pairs:
        from_key = openssl("pkey", "-in", key_path, "-pubout").stdout
        from_cert = openssl("x509", "-in", cert, "-noout", "-pubkey").stdout
        if from_key != from_cert:
            failures.append("public key of %s differs from that of %s" % (key_path, cert))
    for path in [scenario.ca_bundle(ca) for ca in scenario.ca_names()]:
        st = os.stat(path)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o022:
            failures.append("%s: uid %d mode %04o (want ours, not group/world writable)"
                            % (path, st.st_uid, stat.S_IMODE(st.st_mode)))
    assert not failures, "\n".join(failures)


def test_key_types_as_requested(scenario, openssl):
    options = scenario.options
    default_ca = "rsa-2048" if scenario.distribution == "kubeadm" else "ecdsa-p256"
    want = {scenario.ca_key(ca): options.get("ca_key_type", default_ca) for ca in scenario.ca_names()}
    want[scenario.file("service.key" if scenario.rancher else "sa.key")] = options.get("service_key_type", "rsa-2048")
    if scenario.rancher and scenario.result["root"]["generated"]:
        want[scenario.file("root-ca.key")] = options.get("root_key_type", "rsa-4096")
    if scenario.rancher and scenario.result["intermediate"]["generated"]:
        want[scenario.file("intermediate-ca.key")] = options.get("intermediate_key_type", "rsa-4096")
    got = {path: _key_kind(openssl, path)[1] for path in want}
    assert got == want


@pytest.mark.scenarios("k3s-supplied-root", "rke2-supplied-intermediate", "kubeadm-supplied-root")
def test_supplied_material_is_used_not_copied(scenario):
    options = scenario.options
    root = pem_certs(options["root_cert"])
    if scenario.rancher:
        assert pem_certs(scenario.file("root-ca.pem")) == root
        assert not os.path.exists(scenario.file("root-ca.key")), "the operator's root key must never be copied"
    for ca in scenario.ca_names():
        assert pem_certs(scenario.ca_bundle(ca))[-1] == root[0], "%s.crt does not end with the supplied root" % ca
    if "intermediate_cert" in options:
        assert pem_certs(scenario.file("intermediate-ca.pem")) == pem_certs(options["intermediate_cert"])
        with open(options["intermediate_key"], "rb") as supplied, open(scenario.file("intermediate-ca.key"), "rb") as written:
            assert supplied.read() == written.read()


@pytest.mark.scenarios("kubeadm-rsa", "kubeadm-ec-pkcs8-constrained", "kubeadm-supplied-root")
def test_kubeadm_sa_pub_and_discovery_hash(scenario, openssl):
    sa_pub = openssl("pkey", "-in", scenario.file("sa.key"), "-pubout").stdout
    with open(scenario.file("sa.pub"), encoding="ascii") as handle:
        assert handle.read() == sa_pub
    # kubeadm's --discovery-token-ca-cert-hash: SHA-256 of the CA's DER SubjectPublicKeyInfo
    # (openssl prints it as a PEM PUBLIC KEY; its base64 body is that DER).
    spki_pem = openssl("x509", "-in", scenario.ca_alone("ca"), "-noout", "-pubkey").stdout
    body = "".join(line for line in spki_pem.splitlines() if not line.startswith("-----"))
    digest = hashlib.sha256(base64.b64decode(body)).hexdigest()
    assert scenario.result["discovery_token_ca_cert_hash"] == "sha256:" + digest
    assert scenario.result["token_ca_hash"] is None
