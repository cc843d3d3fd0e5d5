# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import datetime
import hashlib

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import certs, chain, keys
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError

NOW = datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.timezone.utc)


def make_ca(cn, key_type="ecdsa-p256", issuer=None, days=365, path_len=None, now=NOW):
    key = keys.generate_private_key(key_type)
    cert = certs.build_ca_certificate(subject_common_name=cn, subject_public_key=key.public_key(),
                                      issuer_certificate=issuer[0] if issuer else None,
                                      issuer_key=issuer[1] if issuer else key,
                                      validity_days=days, path_len=path_len, now=now)
    return cert, key


@pytest.mark.parametrize("key_type", keys.KEY_TYPES)
@pytest.mark.parametrize("key_format", keys.KEY_FORMATS)
def test_key_round_trip(key_type, key_format):
    key = keys.generate_private_key(key_type)
    data = keys.serialize_private_key(key, key_format=key_format)
    expected = {("traditional", "rsa"): b"BEGIN RSA PRIVATE KEY", ("traditional", "ecdsa"): b"BEGIN EC PRIVATE KEY"}
    marker = expected.get((key_format, key_type.split("-")[0]), b"BEGIN PRIVATE KEY")
    assert marker in data
    loaded = keys.load_private_key(data, source="k.pem")
    assert keys.same_key(loaded, key)
    assert keys.key_type_of(loaded) == key_type


def test_load_several_keys_in_order_and_skip_ec_parameters():
    first, second = keys.generate_private_key("ecdsa-p256"), keys.generate_private_key("rsa-2048")
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    data = params + keys.serialize_private_key(first) + keys.serialize_private_key(second, key_format="pkcs8")
    loaded = keys.load_private_keys(data, source="service.key")
    assert [keys.key_type_of(k) for k in loaded] == ["ecdsa-p256", "rsa-2048"]
    assert keys.same_key(loaded[0], first)


@pytest.mark.parametrize("data, fragment", [
    (b"", "holds no PEM private key"),
    (b"-----BEGIN RSA PRIVATE KEY-----\nnot base64!!\n-----END RSA PRIVATE KEY-----\n", "cannot be parsed"),
])
def test_bad_keys_name_the_file(data, fragment):
    with pytest.raises(InvalidInputError) as info:
        keys.load_private_keys(data, source="/x/bad.key")
    assert "/x/bad.key" in str(info.value) and fragment in str(info.value)


def test_unknown_key_type():
    with pytest.raises(InvalidInputError, match="unknown key type"):
        keys.generate_private_key("dsa-1024")


def test_ca_profile():
    root, root_key = make_ca("root", "rsa-2048", days=7300, path_len=1)
    inter, _inter_key = make_ca("inter", issuer=(root, root_key), days=100)
    from cryptography import x509
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.digital_signature and ku.value.key_encipherment
    assert certs.subject_key_id(root) is not None
    assert certs.authority_key_id(root) is None  # self-signed: no AKI, like k3s's own CAs
    assert certs.authority_key_id(inter) == certs.subject_key_id(root)
    assert certs.is_self_signed(root) and not certs.is_self_signed(inter)
    assert certs.is_directly_issued_by(inter, root)
    assert certs.looks_like_root(root) and not certs.looks_like_root(inter)
    with pytest.raises(x509.ExtensionNotFound):
        root.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert root.serial_number > 0


def test_validity_clamped_to_issuer():
    root, root_key = make_ca("root", days=30)
    inter, _key = make_ca("inter", issuer=(root, root_key), days=3650)
    assert certs.not_after(inter) == certs.not_after(root)
    assert certs.not_before(inter) >= certs.not_before(root)


def test_issuer_expired_refuses():
    root, root_key = make_ca("root", days=1, now=NOW - datetime.timedelta(days=10))
    with pytest.raises(InvalidInputError, match="not valid long enough"):
        make_ca("inter", issuer=(root, root_key), days=10)


def test_bundle_round_trip_keeps_order():
    a, _ka = make_ca("a")
    b, _kb = make_ca("b")
    data = certs.dump_certificates([b, a])
    assert [certs.common_name(c.subject) for c in certs.load_certificates(data, source="x")] == ["b", "a"]


def test_malformed_bundle():
    good, _key = make_ca("a")
    data = certs.dump_certificates([good]) + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(InvalidInputError, match="certificate 2 of 2 cannot be parsed"):
        certs.load_certificates(data, source="ca.crt")
    with pytest.raises(InvalidInputError, match="no PEM certificate"):
        certs.load_certificates(b"hello", source="ca.crt")


def test_hash_ca_single_is_sha256_of_bytes():
    root, _key = make_ca("root")
    data = certs.dump_certificates([root])
    assert chain.hash_ca(data) == hashlib.sha256(data).hexdigest()
    crlf = data.replace(b"\n", b"\r\n")
    assert chain.hash_ca(crlf) == hashlib.sha256(crlf).hexdigest() != chain.hash_ca(data)


def test_hash_ca_bundle_is_root_der():
    root, root_key = make_ca("root", "rsa-2048", days=7300)
    inter, inter_key = make_ca("inter", issuer=(root, root_key), days=3000)
    server, _key = make_ca("server", issuer=(inter, inter_key), days=3000)
    bundle = certs.dump_certificates([server, inter, root])
    assert chain.hash_ca(bundle) == hashlib.sha256(certs.certificate_der(root)).hexdigest()


def test_hash_ca_falls_back_to_bytes_when_chain_does_not_verify():
    root, root_key = make_ca("root")
    other, _other_key = make_ca("other")
    inter, _key = make_ca("inter", issuer=(root, root_key))
    bundle = certs.dump_certificates([inter, other])
    assert chain.hash_ca(bundle) == hashlib.sha256(bundle).hexdigest()


def test_hash_ca_cross_signed_bundle_ends_at_new_self_signed_root():
    old_root, old_key = make_ca("old-root", days=3650)
    new_key = keys.generate_private_key("ecdsa-p256")
    new_root = certs.build_ca_certificate(subject_common_name="new-root", subject_public_key=new_key.public_key(),
                                          issuer_certificate=None, issuer_key=new_key, validity_days=7300, now=NOW)
    cross = certs.build_ca_certificate(subject_common_name="new-root", subject_public_key=new_key.public_key(),
                                       issuer_certificate=old_root, issuer_key=old_key, validity_days=7300, now=NOW)
    inter, _ik = make_ca("new-inter", issuer=(new_root, new_key), days=3650)
    bundle = certs.dump_certificates([inter, new_root, cross, old_root])
    assert chain.hash_ca(bundle, at=NOW + datetime.timedelta(days=1)) == \
        hashlib.sha256(certs.certificate_der(new_root)).hexdigest()
    # An old client trusting only the old root still reaches the new intermediate via the cross-signed cert.
    assert chain.verifies(inter, roots=[old_root], intermediates=[cross], at=NOW + datetime.timedelta(days=1))


def test_chain_rules_expiry_pathlen_eku():
    later = NOW + datetime.timedelta(days=1)
    root, root_key = make_ca("root", days=3650, path_len=0)
    inter, inter_key = make_ca("inter", issuer=(root, root_key))
    leaf_key = keys.generate_private_key("ecdsa-p256")
    leaf = certs.build_leaf_certificate(subject_common_name="leaf", subject_public_key=leaf_key.public_key(),
                                        issuer_certificate=inter, issuer_key=inter_key, validity_days=10,
                                        server_auth=False, client_auth=True, now=NOW)
    # pathlen 0 on the root forbids the intermediate below it.
    assert not chain.verifies(leaf, roots=[root], intermediates=[inter], at=later, usage=None)
    root2, root2_key = make_ca("root2", days=3650)
    inter2, inter2_key = make_ca("inter2", issuer=(root2, root2_key))
    leaf2 = certs.build_leaf_certificate(subject_common_name="leaf", subject_public_key=leaf_key.public_key(),
                                         issuer_certificate=inter2, issuer_key=inter2_key, validity_days=10,
                                         server_auth=False, client_auth=True, now=NOW)
    assert chain.verifies(leaf2, roots=[root2], intermediates=[inter2], at=later, usage="clientAuth")
    assert not chain.verifies(leaf2, roots=[root2], intermediates=[inter2], at=later, usage="serverAuth")
    assert not chain.verifies(leaf2, roots=[root2], intermediates=[inter2], at=NOW + datetime.timedelta(days=30),
                              usage="clientAuth")
