# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The CA sets judged by Go crypto/x509 (the library k3s, RKE2, etcd and kubectl verify with).

Also k3s's join-token CA hash: the module's ``token_ca_hash`` must equal the hash computed by an
independent Go implementation of ``hashCA`` (k3s-rke2-pki.md section 6.2) over the written
``server-ca.crt``; and the collection's Python ``hash_ca`` must agree with Go on tricky bundles.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from interop_lib import CA_EXTENSIONS, pem_certs, write_text


def _ok(result, what):
    assert result.returncode == 0, "Go rejected %s:\n%s%s" % (what, result.stdout, result.stderr)


def _rejected(result, what, expected):
    assert result.returncode != 0, "Go ACCEPTED %s, which must be rejected:\n%s" % (what, result.stdout)
    assert expected in result.stderr, "Go rejected %s, but not with %r: %s" % (what, expected, result.stderr)


def test_go_verifies_every_ca(scenario, go_verifier):
    failures = []
    names = list(scenario.ca_names()) + (["intermediate-ca"] if scenario.rancher else [])
    for ca in names:
        cert = scenario.file("intermediate-ca.pem") if ca == "intermediate-ca" else scenario.ca_alone(ca)
        result = go_verifier.verify(cert, roots=scenario.trust_root(ca), intermediates=scenario.intermediates_for(ca),
                                    usage="any")
        if result.returncode != 0:
            failures.append("%s: %s" % (ca, result.stderr.strip()))
        elif scenario.has_root and "\n" not in result.stdout.strip().split("chain 0:", 1)[1].strip():
            failures.append("%s: chain too short: %s" % (ca, result.stdout))
    assert not failures, "Go crypto/x509 rejected:\n" + "\n".join(failures)


def test_go_leaf_usages_and_names(scenario, go_verifier, openssl, tmp_path):
    work = str(tmp_path)
    server_ca, client_ca = scenario.role("server"), scenario.role("client")
    server, _key = openssl.leaf(work, "server", issuer_cert=scenario.ca_alone(server_ca),
                                issuer_key=scenario.ca_key(server_ca), cn="kube-apiserver", server=True, client=False,
                                dns=("localhost", "kubernetes.default.svc"), ips=("127.0.0.1",))
    client, _key = openssl.leaf(work, "client", issuer_cert=scenario.ca_alone(client_ca),
                                issuer_key=scenario.ca_key(client_ca), cn="kubernetes-admin",
                                orgs=("system:masters",))
    server_chain = scenario.serving_chain(server, server_ca)
    # As kubectl does: trust the whole server-ca.crt bundle, the server sends leaf + CAs above it.
    _ok(go_verifier.verify(server_chain, roots=scenario.ca_bundle(server_ca), usage="server", dns="localhost"),
        "the server leaf against %s.crt" % server_ca)
    # Anchored at the root only: the chain the server sends must be enough.
    _ok(go_verifier.verify(server_chain, roots=scenario.trust_root(server_ca), usage="server",
                           dns="kubernetes.default.svc"), "the server leaf anchored at the root")
    _ok(go_verifier.verify(server, roots=scenario.trust_root(server_ca), intermediates=scenario.untrusted_for(server_ca),
                           usage="server", dns="127.0.0.1"), "the server leaf for IP 127.0.0.1")
    _rejected(go_verifier.verify(server_chain, roots=scenario.ca_bundle(server_ca), usage="client"),
              "a serverAuth-only leaf for client auth", "incompatible key usage")
    _rejected(go_verifier.verify(server_chain, roots=scenario.ca_bundle(server_ca), usage="server",
                                 dns="kubernetes.default.svc.example"), "a leaf for a name it lacks", "not ")
    _ok(go_verifier.verify(client, roots=scenario.ca_bundle(client_ca), usage="client"),
        "the client leaf against %s.crt (leaf only, as kubeconfigs carry it)" % client_ca)
    _rejected(go_verifier.verify(client, roots=scenario.ca_bundle(client_ca), usage="server"),
              "a clientAuth-only leaf for server auth", "incompatible key usage")
    if scenario.has_root:
        # Leaf only, anchored at the root, no intermediates: the chain is incomplete.
        _rejected(go_verifier.verify(server, roots=scenario.trust_root(server_ca), usage="server"),
                  "a leaf without its intermediates", "unknown authority")


def test_go_rejects_foreign_ca(scenario, go_verifier, tmp_path):
    work = str(tmp_path)
    server_ca = scenario.role("server")
    _foreign_cert, leaf = scenario.foreign_lookalike(server_ca, work)
    result = go_verifier.verify(leaf, roots=scenario.ca_bundle(server_ca), usage="server", dns="localhost")
    assert result.returncode != 0, "Go accepted a leaf of a foreign CA named like %s" % server_ca
    assert "unknown authority" in result.stderr or "crypto/" in result.stderr, result.stderr


def _root_sha256(openssl, path):
    return openssl.fingerprint_hex(path)


def test_token_ca_hash_matches_go(scenario, go_verifier, openssl):
    server_ca = scenario.role("server")
    go_hash = go_verifier.hashca(scenario.ca_bundle(server_ca))
    if scenario.rancher:
        assert scenario.result["token_ca_hash"] == go_hash, "module token_ca_hash != Go hashCA(server-ca.crt)"
        # For a custom CA chain the hash is the SHA-256 of the root's DER (openssl's fingerprint).
        assert go_hash == _root_sha256(openssl, scenario.file("root-ca.pem"))
        if "root_cert" in scenario.options:
            assert go_hash == _root_sha256(openssl, scenario.options["root_cert"])
    else:
        assert scenario.result["token_ca_hash"] is None
        with open(scenario.ca_bundle(server_ca), "rb") as handle:
            raw = hashlib.sha256(handle.read()).hexdigest()
        if scenario.has_root:
            assert go_hash == _root_sha256(openssl, scenario.root_file())
        else:
            assert go_hash == raw, "single self-signed cert: hashCA is sha256 of the file bytes"


# --- the engine's hash_ca against Go, on bundles built with openssl ---------------------------------
def _engine_hash_ca():
    try:
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.kubepki.certs.plugins.module_utils._pki.chain import hash_ca
    except ImportError as exc:
        pytest.fail("cannot import the collection (%s); set PYTHONPATH to the directory holding "
                    "ansible_collections/kubepki/certs" % exc, pytrace=False)
    return hash_ca


@pytest.fixture(scope="module")
def hash_bundles(tmp_path_factory, openssl):
    """name -> bundle file: the shapes k3s meets in server-ca.crt, including ones where Verify fails."""
    work = str(tmp_path_factory.mktemp("hashca"))
    root, root_key = openssl.self_signed_ca(work, "root", cn="hash-root")
    inter, inter_key = openssl.sub_ca(work, "inter", cn="hash-inter", issuer_cert=root, issuer_key=root_key)
    server, _key = openssl.sub_ca(work, "server", cn="hash-server-ca", issuer_cert=inter, issuer_key=inter_key)
    other_root, _key = openssl.self_signed_ca(work, "other-root", cn="hash-other-root")
    # A CA whose EKU lacks serverAuth: Go's default Verify fails → k3s falls back to raw bytes.
    eku_ca, _key = openssl.sign(
        work, "eku-ca", openssl.genkey(os.path.join(work, "eku-ca.key")), cn="hash-eku-ca", issuer_cert=inter,
        issuer_key=inter_key, days=100,
        extensions="subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\nbasicConstraints=critical,CA:true\n"
                   "keyUsage=critical,digitalSignature,keyCertSign\nextendedKeyUsage=clientAuth\n")

    # k3s rotate-default-ca-certs.sh shape: new root self-signed AND cross-signed by the old root.
    new_root, new_root_key = openssl.self_signed_ca(work, "new-root", cn="hash-new-root")
    new_root_x, _key = openssl.sub_ca(work, "new-root-x", cn="hash-new-root", issuer_cert=root, issuer_key=root_key,
                                      key=new_root_key)
    new_ca, _key = openssl.sub_ca(work, "new-ca", cn="hash-new-ca", issuer_cert=new_root, issuer_key=new_root_key)
    # An intermediate that expired long ago / is not valid yet: Verify fails → raw bytes.
    expired, _key = openssl.sign_dated(work, "expired-inter", openssl.genkey(os.path.join(work, "expired.key")),
                                       cn="hash-inter", issuer_cert=root, issuer_key=root_key, start="20200101000000Z",
                                       end="20210101000000Z", extensions=CA_EXTENSIONS % "critical,CA:true")
    future, _key = openssl.sign_dated(work, "future-inter", openssl.genkey(os.path.join(work, "future.key")),
                                      cn="hash-inter", issuer_cert=root, issuer_key=root_key, start="20990101000000Z",
                                      end="20991231000000Z", extensions=CA_EXTENSIONS % "critical,CA:true")

    # CA certificates Go refuses as parents (x509: "parent certificate cannot sign this kind of certificate").
    no_sign_ext = ("subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\nbasicConstraints=critical,CA:true\n"
                   "keyUsage=critical,digitalSignature\n")
    no_sign_key = openssl.genkey(os.path.join(work, "no-sign-inter.key"))
    no_sign_inter, _key = openssl.sign(work, "no-sign-inter", no_sign_key, cn="hash-no-sign-inter", issuer_cert=root,
                                       issuer_key=root_key, days=100, extensions=no_sign_ext)
    under_no_sign, _key = openssl.sub_ca(work, "under-no-sign", cn="hash-server-ca", issuer_cert=no_sign_inter,
                                         issuer_key=no_sign_key)
    no_sign_root, no_sign_root_key = openssl.self_signed_ca(work, "no-sign-root", cn="hash-no-sign-root",
                                                            extensions=no_sign_ext)
    under_no_sign_root, _key = openssl.sub_ca(work, "under-no-sign-root", cn="hash-server-ca",
                                              issuer_cert=no_sign_root, issuer_key=no_sign_root_key)
    not_ca_root, not_ca_root_key = openssl.self_signed_ca(
        work, "not-ca-root", cn="hash-not-ca-root",
        extensions="subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\nbasicConstraints=critical,CA:false\n"
                   "keyUsage=critical,digitalSignature,keyCertSign\n")
    under_not_ca_root, _key = openssl.sub_ca(work, "under-not-ca-root", cn="hash-server-ca", issuer_cert=not_ca_root,
                                             issuer_key=not_ca_root_key)
    pathlen0_inter, pathlen0_key = openssl.sub_ca(work, "pathlen0-inter", cn="hash-pathlen0-inter", issuer_cert=root,
                                                  issuer_key=root_key, pathlen=0)
    under_pathlen0, _key = openssl.sub_ca(work, "under-pathlen0", cn="hash-server-ca", issuer_cert=pathlen0_inter,
                                          issuer_key=pathlen0_key)
    pathlen0_root, pathlen0_root_key = openssl.self_signed_ca(work, "pathlen0-root", cn="hash-pathlen0-root",
                                                              extensions=CA_EXTENSIONS % "critical,CA:true,pathlen:0")
    inter_under_pl0, inter_under_pl0_key = openssl.sub_ca(work, "inter-under-pl0", cn="hash-inter-under-pl0",
                                                          issuer_cert=pathlen0_root, issuer_key=pathlen0_root_key)
    ca_under_pl0, _key = openssl.sub_ca(work, "ca-under-pl0", cn="hash-server-ca", issuer_cert=inter_under_pl0,
                                        issuer_key=inter_under_pl0_key)

    def first(path):
        return pem_certs(path)[0]

    bundles = {
        "single": first(root),
        "single-crlf": first(root).replace("\n", "\r\n"),
        "single-with-text": "# comment line\n" + first(root) + "\n",
        "chain": first(server) + first(inter) + first(root),
        "chain-root-first-order-mixed": first(server) + first(root) + first(inter),
        "chain-missing-intermediate": first(server) + first(root),
        "unrelated": first(server) + first(other_root),
        "eku-client-only": first(eku_ca) + first(inter) + first(root),
        "two-roots": first(inter) + first(other_root) + first(root),
        "cross-signed-rotation": first(new_ca) + first(new_root) + first(new_root_x) + first(root),
        "cross-signed-only": first(new_ca) + first(new_root_x) + first(root),
        "expired-intermediate-only": first(server) + first(expired) + first(root),
        "expired-and-valid-intermediate": first(server) + first(expired) + first(inter) + first(root),
        "future-intermediate-only": first(server) + first(future) + first(root),
        "intermediate-without-certsign": first(under_no_sign) + first(no_sign_inter) + first(root),
        "root-without-certsign": first(under_no_sign_root) + first(no_sign_root),
        "root-not-ca": first(under_not_ca_root) + first(not_ca_root),
        "pathlen0-intermediate-above-ca": first(under_pathlen0) + first(pathlen0_inter) + first(root),
        "pathlen0-root-above-two-cas": first(ca_under_pl0) + first(inter_under_pl0) + first(pathlen0_root),
    }
    return {name: write_text(os.path.join(work, name + ".crt"), text) for name, text in bundles.items()}


# bundle -> the cert whose DER k3s hashes (None: verification fails, raw bytes are hashed)
HASH_EXPECTATIONS = {
    "single": None, "single-crlf": None, "single-with-text": None,
    "chain": "root.pem", "chain-root-first-order-mixed": "root.pem", "chain-missing-intermediate": None,
    "unrelated": None, "eku-client-only": None, "two-roots": "root.pem",
    "cross-signed-rotation": "new-root.pem", "cross-signed-only": "root.pem",
    "expired-intermediate-only": None, "expired-and-valid-intermediate": "root.pem", "future-intermediate-only": None,
    "intermediate-without-certsign": None, "root-without-certsign": None, "root-not-ca": None,
    "pathlen0-intermediate-above-ca": "root.pem", "pathlen0-root-above-two-cas": None,
}


# Among the bundles, "intermediate-without-certsign", "root-without-certsign" and "root-not-ca" have a parent
# Go refuses (CheckSignatureFrom: CA:TRUE and keyCertSign required): the hash must fall back to raw bytes
# exactly as k3s's does. They were engine defects once and stay as regression cases.


@pytest.mark.parametrize("bundle_name", sorted(HASH_EXPECTATIONS))
def test_engine_hash_ca_agrees_with_go(bundle_name, hash_bundles, go_verifier, openssl):
    path = hash_bundles[bundle_name]
    with open(path, "rb") as handle:
        data = handle.read()
    go_hash = go_verifier.hashca(path)
    assert _engine_hash_ca()(data) == go_hash, "Python hash_ca disagrees with Go hashCA on %s" % bundle_name
    expected = HASH_EXPECTATIONS[bundle_name]
    if expected:
        assert go_hash == openssl.fingerprint_hex(os.path.join(os.path.dirname(path), expected))
    else:
        assert go_hash == hashlib.sha256(data).hexdigest(), "expected the raw-bytes fallback"
