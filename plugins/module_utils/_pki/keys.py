# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Private and public keys: generate, load (PKCS#1, SEC1, PKCS#8 PEM), serialise, compare."""

from __future__ import annotations

from ansible_collections.kubepki.certs.plugins.module_utils._pki.deps import ec, hashes, rsa, serialization, x509
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.pem import (
    PRIVATE_KEY_LABELS,
    PUBLIC_KEY_LABELS,
    blocks_with_labels,
)


KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096")
KEY_FORMATS = ("traditional", "pkcs8")
"""``traditional`` = PKCS#1 for RSA and SEC1 for EC, which is what k3s and OpenSSL's
``genrsa -traditional`` / ``ecparam -genkey`` write; ``pkcs8`` = ``BEGIN PRIVATE KEY``."""


def generate_private_key(key_type: str):
    """Generate a key of one of ``KEY_TYPES``."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa-") and key_type in KEY_TYPES:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise InvalidInputError("unknown key type %r; use one of %s" % (key_type, ", ".join(KEY_TYPES)))


def key_type_of(key) -> str:
    """Name a private or public key with the ``KEY_TYPES`` vocabulary (or a descriptive fallback)."""
    public = public_of(key)
    if isinstance(public, rsa.RSAPublicKey):
        return "rsa-%d" % public.key_size
    if isinstance(public, ec.EllipticCurvePublicKey):
        names = {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384", "secp521r1": "ecdsa-p521"}
        return names.get(public.curve.name, "ecdsa-" + public.curve.name)
    return type(public).__name__


def load_private_keys(data: bytes, *, source: str) -> list:
    """Every private key in a PEM file, in order. ``source`` names the file in errors."""
    blocks = blocks_with_labels(data, PRIVATE_KEY_LABELS)
    if not blocks:
        raise InvalidInputError("%s holds no PEM private key (expected BEGIN RSA PRIVATE KEY, "
                                "BEGIN EC PRIVATE KEY or BEGIN PRIVATE KEY)" % source, path=source)
    keys = []
    for index, block in enumerate(blocks, start=1):
        try:
            keys.append(serialization.load_pem_private_key(block, password=None))
        except TypeError:
            raise InvalidInputError("%s: private key %d is encrypted; supply it unencrypted" % (source, index),
                                    path=source) from None
        except (ValueError, Exception) as exc:  # cryptography raises ValueError or UnsupportedAlgorithm
            raise InvalidInputError("%s: private key %d cannot be parsed (%s)" % (source, index, exc),
                                    path=source) from None
    return keys


def load_private_key(data: bytes, *, source: str):
    """The first private key in a PEM file (the one k3s and Go's LoadX509KeyPair use)."""
    return load_private_keys(data, source=source)[0]


def load_public_keys(data: bytes, *, source: str) -> list:
    """Every public key in a PEM file (``PUBLIC KEY`` / ``RSA PUBLIC KEY``), in order."""
    keys = []
    for index, block in enumerate(blocks_with_labels(data, PUBLIC_KEY_LABELS), start=1):
        try:
            keys.append(serialization.load_pem_public_key(block))
        except (ValueError, Exception) as exc:
            raise InvalidInputError("%s: public key %d cannot be parsed (%s)" % (source, index, exc),
                                    path=source) from None
    if not keys:
        raise InvalidInputError("%s holds no PEM public key" % source, path=source)
    return keys


def serialize_private_key(key, *, key_format: str = "traditional") -> bytes:
    """PEM bytes of an unencrypted private key in the chosen format."""
    if key_format not in KEY_FORMATS:
        raise InvalidInputError("unknown key format %r; use one of %s" % (key_format, ", ".join(KEY_FORMATS)))
    private_format = (serialization.PrivateFormat.TraditionalOpenSSL if key_format == "traditional"
                      else serialization.PrivateFormat.PKCS8)
    return key.private_bytes(serialization.Encoding.PEM, private_format, serialization.NoEncryption())


def serialize_public_key(key) -> bytes:
    """PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo) of a private or public key."""
    return public_of(key).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_of(obj):
    """The public key of a private key, a certificate, or a public key itself."""
    if isinstance(obj, x509.Certificate) or hasattr(obj, "private_bytes"):
        return obj.public_key()
    return obj


def public_key_der(obj) -> bytes:
    """DER SubjectPublicKeyInfo of a private key, public key or certificate: the identity of a key."""
    return public_of(obj).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def same_key(first, second) -> bool:
    """True when two keys/certificates carry the same public key."""
    return public_key_der(first) == public_key_der(second)


def key_matches_certificate(key, certificate) -> bool:
    """True when ``key`` is the private key of ``certificate``."""
    return public_key_der(key) == public_key_der(certificate)


def signature_hash_for(key):
    """The digest a CA signs with: SHA-384 for P-384 keys, SHA-256 otherwise."""
    public = public_of(key)
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()
