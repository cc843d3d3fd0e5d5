# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Certificates: PEM bundles in order, fingerprints, and the CA and leaf profiles k3s uses."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress

from ansible_collections.kubepki.certs.plugins.module_utils._pki.deps import (
    ExtendedKeyUsageOID,
    InvalidSignature,
    NameOID,
    ec,
    ed448,
    ed25519,
    padding,
    rsa,
    serialization,
    x509,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import signature_hash_for
from ansible_collections.kubepki.certs.plugins.module_utils._pki.pem import (
    CERTIFICATE_LABELS,
    blocks_with_labels,
    normalise_block,
)


# Backdating absorbs clock skew between the node that issues and the nodes that verify.
BACKDATE = datetime.timedelta(minutes=5)

EKU_NAMES = {
    "serverAuth": "server auth",
    "clientAuth": "client auth",
}


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def load_certificates(data: bytes, *, source: str) -> list:
    """Every certificate of a PEM bundle, in file order. ``source`` names the file in errors."""
    blocks = blocks_with_labels(data, CERTIFICATE_LABELS)
    if not blocks:
        raise InvalidInputError("%s holds no PEM certificate (no BEGIN CERTIFICATE block)" % source, path=source)
    certificates = []
    for index, block in enumerate(blocks, start=1):
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise InvalidInputError("%s: certificate %d of %d cannot be parsed (%s)"
                                    % (source, index, len(blocks), exc), path=source) from None
    return certificates


def dump_certificates(certificates) -> bytes:
    """PEM bundle of ``certificates`` in the given order, LF line ends."""
    return b"".join(normalise_block(c.public_bytes(serialization.Encoding.PEM)) for c in certificates)


def certificate_der(certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def fingerprint_sha256(certificate) -> str:
    """Colon-separated upper-case SHA-256 of the DER, as ``openssl x509 -fingerprint -sha256`` prints it."""
    digest = hashlib.sha256(certificate_der(certificate)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


# Debian 12 nodes run cryptography 38: the *_utc properties (42) and verify_directly_issued_by (40)
# are used when present, otherwise the same result is computed here.
def not_before(certificate) -> datetime.datetime:
    moment = getattr(certificate, "not_valid_before_utc", None)
    return moment if moment is not None else certificate.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def not_after(certificate) -> datetime.datetime:
    moment = getattr(certificate, "not_valid_after_utc", None)
    return moment if moment is not None else certificate.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def iso8601(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _extension(certificate, extension_class):
    try:
        return certificate.extensions.get_extension_for_class(extension_class).value
    except x509.ExtensionNotFound:
        return None


def subject_key_id(certificate) -> bytes | None:
    ski = _extension(certificate, x509.SubjectKeyIdentifier)
    return ski.digest if ski is not None else None


def authority_key_id(certificate) -> bytes | None:
    aki = _extension(certificate, x509.AuthorityKeyIdentifier)
    return aki.key_identifier if aki is not None else None


def is_ca(certificate) -> bool:
    constraints = _extension(certificate, x509.BasicConstraints)
    return bool(constraints is not None and constraints.ca)


def path_length(certificate) -> int | None:
    constraints = _extension(certificate, x509.BasicConstraints)
    return constraints.path_length if constraints is not None else None


def can_sign_certificates(certificate) -> bool:
    """Go's CheckSignatureFrom rule for a parent: a v3 CA (basicConstraints CA:TRUE) whose keyUsage,
    when present, includes keyCertSign."""
    constraints = _extension(certificate, x509.BasicConstraints)
    if certificate.version == x509.Version.v3 and (constraints is None or not constraints.ca):
        return False
    usage = _extension(certificate, x509.KeyUsage)
    return usage is None or usage.key_cert_sign


def extended_key_usages(certificate) -> list | None:
    """The EKU OIDs as dotted strings, or None when the certificate has no EKU extension."""
    extended = _extension(certificate, x509.ExtendedKeyUsage)
    return None if extended is None else [oid.dotted_string for oid in extended]


def looks_like_root(certificate) -> bool:
    """k3s's root test (``validateCA`` and ``hashCA``): no AKI, or AKI equal to the SKI."""
    aki = authority_key_id(certificate)
    return aki is None or aki == subject_key_id(certificate)


def is_self_signed(certificate) -> bool:
    """Subject equals issuer and the certificate's own key verifies its signature."""
    if certificate.subject != certificate.issuer:
        return False
    return is_directly_issued_by(certificate, certificate)


def is_directly_issued_by(child, issuer) -> bool:
    """True when ``issuer``'s subject is ``child``'s issuer and ``issuer``'s key signed ``child``."""
    if hasattr(child, "verify_directly_issued_by"):
        try:
            child.verify_directly_issued_by(issuer)
        except Exception:  # ValueError (names), InvalidSignature, TypeError (key type)
            return False
        return True
    if child.issuer != issuer.subject:
        return False
    return _signature_valid(child, issuer.public_key())


def _signature_valid(child, public_key) -> bool:
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(),
                              child.signature_hash_algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(child.signature_hash_algorithm))
        elif isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            public_key.verify(child.signature, child.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def common_name(name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return values[0].value if values else ""


def key_usages(certificate) -> list:
    """Key usage and extended key usage names, e.g. ``["digital signature", "cert sign", "server auth"]``."""
    names = []
    usage = _extension(certificate, x509.KeyUsage)
    if usage is not None:
        for attribute, label in (("digital_signature", "digital signature"),
                                 ("content_commitment", "content commitment"),
                                 ("key_encipherment", "key encipherment"),
                                 ("data_encipherment", "data encipherment"),
                                 ("key_agreement", "key agreement"),
                                 ("key_cert_sign", "cert sign"),
                                 ("crl_sign", "crl sign")):
            if getattr(usage, attribute):
                names.append(label)
    extended = _extension(certificate, x509.ExtendedKeyUsage)
    if extended is not None:
        for oid in extended:
            if oid == ExtendedKeyUsageOID.SERVER_AUTH:
                names.append("server auth")
            elif oid == ExtendedKeyUsageOID.CLIENT_AUTH:
                names.append("client auth")
            else:
                names.append(oid.dotted_string)
    return names


def _random_serial() -> int:
    # 159 bits keeps the DER INTEGER positive and within RFC 5280's 20 octets.
    return x509.random_serial_number() >> 1 or 1


def _clamped_validity(*, issuer_certificate, validity_days: int, now: datetime.datetime):
    now = now.replace(microsecond=0)
    start = now - BACKDATE
    end = now + datetime.timedelta(days=validity_days)
    if issuer_certificate is not None:
        # Never outlive (or predate) the issuer: verifiers reject the part of the chain past it.
        start = max(start, not_before(issuer_certificate))
        end = min(end, not_after(issuer_certificate))
    if end <= start:
        raise InvalidInputError("the issuing CA %r is not valid long enough to issue a certificate (notAfter %s)"
                                % (common_name(issuer_certificate.subject), iso8601(not_after(issuer_certificate))))
    return start, end


def build_ca_certificate(*, subject_common_name: str, subject_public_key, issuer_certificate, issuer_key,
                         validity_days: int, path_len: int | None = None, organization: str | None = None,
                         now: datetime.datetime | None = None):
    """A CA certificate with the k3s profile.

    critical basicConstraints CA:true (optional pathlen), critical keyUsage digitalSignature +
    keyEncipherment + keyCertSign, SKI from the public key, AKI keyid when not self-signed, no EKU
    (k3s's chain checks need CA certs without EKU). ``issuer_certificate=None`` means self-signed by
    ``issuer_key``. Validity is clamped to the issuer's.
    """
    now = now or utcnow()
    start, end = _clamped_validity(issuer_certificate=issuer_certificate, validity_days=validity_days, now=now)
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, subject_common_name))
    subject = x509.Name(attributes)
    issuer_name = subject if issuer_certificate is None else issuer_certificate.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(subject_public_key)
        .serial_number(_random_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_public_key), critical=False)
    )
    if issuer_certificate is not None:
        issuer_ski = subject_key_id(issuer_certificate)
        aki = (x509.AuthorityKeyIdentifier(issuer_ski, None, None) if issuer_ski is not None
               else x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_certificate.public_key()))
        builder = builder.add_extension(aki, critical=False)
    return builder.sign(issuer_key, signature_hash_for(issuer_key))


def build_leaf_certificate(*, subject_common_name: str, subject_public_key, issuer_certificate, issuer_key,
                           validity_days: int, server_auth: bool = False, client_auth: bool = True,
                           organizations=(), dns_names=(), ip_addresses=(), now: datetime.datetime | None = None,
                           subject=None):
    """A leaf certificate with the profile k3s gives its own leaves (EKU server and/or client auth). ``subject`` (an
    x509.Name, a CSR's as it is) replaces the one built from ``subject_common_name`` and ``organizations``."""
    now = now or utcnow()
    start, end = _clamped_validity(issuer_certificate=issuer_certificate, validity_days=validity_days, now=now)
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, subject_common_name))
    subject = subject if subject is not None else x509.Name(attributes)
    usages = []
    if server_auth:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if not usages:
        raise InvalidInputError("a leaf certificate needs server_auth or client_auth")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_certificate.subject)
        .public_key(subject_public_key)
        .serial_number(_random_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=True, data_encipherment=False, key_agreement=False,
                                     key_cert_sign=False, crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_public_key), critical=False)
    )
    issuer_ski = subject_key_id(issuer_certificate)
    if issuer_ski is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(issuer_ski, None, None), critical=False)
    names = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, signature_hash_for(issuer_key))


def request_alt_names(request) -> tuple:
    """``(dns_names, ip_addresses)`` a CSR asks for (its SubjectAlternativeName extension request; empty without)."""
    try:
        sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return sans.get_values_for_type(x509.DNSName), [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


def certificate_alt_names(certificate) -> tuple:
    """``(dns_names, ip_addresses)`` of a certificate, in the shape of :func:`request_alt_names`."""
    sans = _extension(certificate, x509.SubjectAlternativeName)
    if sans is None:
        return [], []
    return sans.get_values_for_type(x509.DNSName), [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


def sign_request(request, *, issuer_certificate, issuer_key, validity_days: int, server_auth: bool,
                 client_auth: bool, now: datetime.datetime | None = None, source: str = "CSR"):
    """A leaf certificate for a CSR: its subject (as it is) and DNS/IP names, its public key, the extended key usages
    the caller decides (never the ones the request asks for), issued by ``issuer_certificate``/``issuer_key`` and
    never valid past the issuer. Raises InvalidInputError when the request's self-signature does not verify."""
    if not request.is_signature_valid:
        raise InvalidInputError("%s: the CSR's signature is not valid" % source, path=source)
    dns_names, ip_addresses = request_alt_names(request)
    return build_leaf_certificate(
        subject_common_name=common_name(request.subject) or "-", subject=request.subject,
        subject_public_key=request.public_key(), issuer_certificate=issuer_certificate, issuer_key=issuer_key,
        validity_days=validity_days, now=now or utcnow(), dns_names=dns_names, ip_addresses=ip_addresses,
        server_auth=server_auth, client_auth=client_auth)
