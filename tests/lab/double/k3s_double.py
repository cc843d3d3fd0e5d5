# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""k3s / RKE2 test double for the kubepki.certs multi-node lab.

Written independently of the collection's code (stdlib + cryptography 38 + PyYAML), following
the upstream behaviour documented in /work/shared/reference/k3s-rke2-pki.md. Installed as
``/usr/local/bin/k3s`` and ``/usr/local/bin/rke2``; the program is chosen by ``argv[0]``
(or ``KUBEPKI_DOUBLE_PROGRAM``). See tests/lab/double/README.md.
"""

import base64
import binascii
import datetime
import fcntl
import glob
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = os.environ.get("KUBEPKI_DOUBLE_ROOT", "").rstrip("/")
DEFAULT_VERSIONS = {"k3s": "v1.31.6+k3s1", "rke2": "v1.31.6+rke2r1"}
SYSTEM_TIME_SKEW = 3
HEARTBEAT_INTERVAL = float(os.environ.get("KUBEPKI_DOUBLE_HEARTBEAT", "3"))
HEARTBEAT_STALE = float(os.environ.get("KUBEPKI_DOUBLE_STALE", "15"))
RETRY_INTERVAL = 5.0
SERVER_CLIENT_CN = {"k3s": "system:k3s-supervisor", "rke2": "system:rke2-supervisor"}

# ControlRuntimeBootstrap field order (pkg/daemons/config/types.go) -> path under server/tls.
FIELDS = (
    ("ETCDServerCA", "etcd/server-ca.crt"), ("ETCDServerCAKey", "etcd/server-ca.key"),
    ("ETCDPeerCA", "etcd/peer-ca.crt"), ("ETCDPeerCAKey", "etcd/peer-ca.key"),
    ("ServerCA", "server-ca.crt"), ("ServerCAKey", "server-ca.key"),
    ("ClientCA", "client-ca.crt"), ("ClientCAKey", "client-ca.key"),
    ("ServiceKey", "service.key"),
    ("RequestHeaderCA", "request-header-ca.crt"), ("RequestHeaderCAKey", "request-header-ca.key"),
)
FIELD_PATHS = dict(FIELDS)

OID_NETSCAPE_SGC = x509.ObjectIdentifier("2.16.840.1.113730.4.1")
OID_MICROSOFT_SGC = x509.ObjectIdentifier("1.3.6.1.4.1.311.10.3.3")
CLIENT = "client"
SERVER = "server"
BOTH = "both"


def rooted(path):
    """A built-in absolute default path, moved under KUBEPKI_DOUBLE_ROOT when that is set (local tests)."""
    return ROOT + path if ROOT else path


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def iso(when):
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class Logger:
    """logrus-style text log lines on stderr."""

    def __init__(self):
        self.lock = threading.Lock()

    def log(self, level, msg):
        line = 'time="%s" level=%s msg=%s\n' % (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), level, json.dumps(msg))
        with self.lock:
            sys.stderr.write(line)
            sys.stderr.flush()


LOG = Logger()


def info(msg):
    LOG.log("info", msg)


def warn(msg):
    LOG.log("warning", msg)


def error(msg):
    LOG.log("error", msg)


class Fatal(Exception):
    """Stops the program like logrus.Fatal (exit 1) after logging the message."""


def fatal(msg):
    LOG.log("fatal", msg)
    raise Fatal(msg)


# --------------------------------------------------------------------------------------------------
# files


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def atomic_write(path, data, mode=0o600, mtime=None):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------------
# PEM, keys, certificates

PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


def pem_blocks(data):
    """(type, der) of every PEM block in ``data``."""
    blocks = []
    for match in PEM_RE.finditer(data):
        body = b"".join(line.strip() for line in match.group(2).splitlines() if b":" not in line)
        try:
            blocks.append((match.group(1).decode(), base64.b64decode(body)))
        except (binascii.Error, ValueError):
            continue
    return blocks


def parse_certs(data):
    """certutil.ParseCertsPEM: every CERTIFICATE block; error when a block does not parse or none found."""
    certs = []
    for kind, der in pem_blocks(data):
        if kind != "CERTIFICATE":
            continue
        certs.append(x509.load_der_x509_certificate(der))
    if not certs:
        raise ValueError("data does not contain any valid RSA or ECDSA certificates")
    return certs


def parse_private_keys(data):
    keys = []
    for kind, der in pem_blocks(data):
        if kind.endswith("PRIVATE KEY"):
            keys.append(serialization.load_der_private_key(der, None))
    return keys


def public_keys_from_pem(data):
    """certutil.PublicKeysFromFile: public keys of every private/public key block."""
    keys = []
    for kind, der in pem_blocks(data):
        if kind.endswith("PRIVATE KEY"):
            keys.append(serialization.load_der_private_key(der, None).public_key())
        elif kind in ("PUBLIC KEY", "RSA PUBLIC KEY"):
            if kind == "PUBLIC KEY":
                keys.append(serialization.load_der_public_key(der))
            else:
                pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END RSA PUBLIC KEY-----\n"
                keys.append(serialization.load_pem_public_key(pem))
    if not keys:
        raise ValueError("data does not contain any valid RSA or ECDSA public keys")
    return keys


def pub_der(key):
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key):
    if isinstance(key, rsa.RSAPrivateKey) or isinstance(key, ec.EllipticCurvePrivateKey):
        fmt = serialization.PrivateFormat.TraditionalOpenSSL
    else:
        fmt = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def ext_value(cert, oid):
    try:
        return cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def ski(cert):
    value = ext_value(cert, x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    return value.digest if value is not None else b""


def aki(cert):
    value = ext_value(cert, x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    return (value.key_identifier or b"") if value is not None else b""


def common_name(cert):
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return names[0].value if names else ""


def not_before(cert):
    return cert.not_valid_before.replace(tzinfo=None)


def not_after(cert):
    return cert.not_valid_after.replace(tzinfo=None)


# --------------------------------------------------------------------------------------------------
# Go crypto/x509 Verify, re-implemented (chain building, current time, EKU check)


class VerifyError(Exception):
    pass


def go_time(when):
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class Pool:
    """x509.CertPool: de-duplicated certificates looked up by raw subject."""

    def __init__(self, certs=()):
        self.certs = []
        self.raw = set()
        for cert in certs:
            self.add(cert)

    def add(self, cert):
        raw = cert.public_bytes(serialization.Encoding.DER)
        if raw not in self.raw:
            self.raw.add(raw)
            self.certs.append(cert)

    def contains(self, cert):
        return cert.public_bytes(serialization.Encoding.DER) in self.raw

    def potential_parents(self, cert):
        issuer = cert.issuer.public_bytes()
        matching, one, mismatch = [], [], []
        child_aki = aki(cert)
        for cand in self.certs:
            if cand.subject.public_bytes() != issuer:
                continue
            cand_ski = ski(cand)
            if cand_ski == child_aki:
                matching.append(cand)
            elif (not cand_ski and child_aki) or (cand_ski and not child_aki):
                one.append(cand)
            else:
                mismatch.append(cand)
        return matching + one + mismatch


def check_signature(child, parent):
    """Go's CheckSignatureFrom: parent must be a CA allowed to sign certificates; then the signature."""
    bc = ext_value(parent, x509.oid.ExtensionOID.BASIC_CONSTRAINTS)
    if parent.version == x509.Version.v3 and (bc is None or not bc.ca):
        raise VerifyError("x509: invalid signature: parent certificate cannot sign this kind of certificate")
    ku = ext_value(parent, x509.oid.ExtensionOID.KEY_USAGE)
    if ku is not None and not ku.key_cert_sign:
        raise VerifyError("x509: invalid signature: parent certificate cannot sign this kind of certificate")
    algo = child.signature_hash_algorithm
    if isinstance(algo, (hashes.SHA1, hashes.MD5)):
        raise VerifyError("x509: cannot verify signature: insecure algorithm %s" % algo.name.upper())
    pub = parent.public_key()
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(), algo)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(algo))
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(child.signature, child.tbs_certificate_bytes)
        else:
            raise VerifyError("x509: cannot verify signature: algorithm unimplemented")
    except InvalidSignature as exc:
        raise VerifyError("crypto/rsa: verification error" if isinstance(pub, rsa.RSAPublicKey) else "x509: ECDSA verification failure") from exc
    except (ValueError, TypeError) as exc:
        raise VerifyError("x509: cannot verify signature: %s" % exc) from exc


def is_valid(cert, cert_type, chain, now):
    if now < not_before(cert):
        raise VerifyError("x509: certificate has expired or is not yet valid: current time %s is before %s" % (go_time(now), go_time(not_before(cert))))
    if now > not_after(cert):
        raise VerifyError("x509: certificate has expired or is not yet valid: current time %s is after %s" % (go_time(now), go_time(not_after(cert))))
    if cert_type != "leaf":
        bc = ext_value(cert, x509.oid.ExtensionOID.BASIC_CONSTRAINTS)
        if bc is not None and bc.path_length is not None and len(chain) - 1 > bc.path_length:
            raise VerifyError("x509: too many intermediates for path length constraint")


def san_raw(cert):
    try:
        return cert.extensions.get_extension_for_oid(x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value.public_bytes()
    except x509.ExtensionNotFound:
        return None


def already_in_chain(cand, chain):
    for cert in chain:
        if cand.subject.public_bytes() != cert.subject.public_bytes():
            continue
        if pub_der(cand.public_key()) != pub_der(cert.public_key()):
            continue
        cand_san, cert_san = san_raw(cand), san_raw(cert)
        if cand_san is None and cert_san is None:
            return True
        if cand_san is None or cert_san is None:
            return False
        if cand_san == cert_san:
            return True
    return False


class _BuildState:
    def __init__(self):
        self.sig_checks = 0
        self.err = None
        self.hint = None


def build_chains(cert, chain, roots, intermediates, now, state):
    chains = []

    def consider(cert_type, cand):
        if already_in_chain(cand, chain):
            return
        state.sig_checks += 1
        if state.sig_checks > 100:
            state.err = VerifyError("x509: signature check attempts limit reached while verifying certificate chain")
            return
        try:
            check_signature(cert, cand)
        except VerifyError as exc:
            if state.hint is None:
                state.hint = (str(exc), common_name(cand) or str(cand.serial_number))
            return
        try:
            is_valid(cand, cert_type, chain, now)
        except VerifyError as exc:
            state.err = exc
            return
        if cert_type == "root":
            chains.append(chain + [cand])
        else:
            chains.extend(build_chains(cand, chain + [cand], roots, intermediates, now, state))

    for cand in roots.potential_parents(cert):
        consider("root", cand)
    for cand in intermediates.potential_parents(cert):
        consider("intermediate", cand)
    return chains


def check_chain_eku(chain, usages):
    usages = list(usages)
    remaining = len(usages)
    for cert in reversed(chain):
        eku = ext_value(cert, x509.oid.ExtensionOID.EXTENDED_KEY_USAGE)
        if eku is None or len(list(eku)) == 0:
            continue
        ekus = list(eku)
        if x509.oid.ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in ekus:
            continue
        for index, wanted in enumerate(usages):
            if wanted is None:
                continue
            if wanted in ekus or (wanted == ExtendedKeyUsageOID.SERVER_AUTH and (OID_NETSCAPE_SGC in ekus or OID_MICROSOFT_SGC in ekus)):
                continue
            usages[index] = None
            remaining -= 1
            if remaining == 0:
                return False
    return True


def go_verify(leaf, roots, intermediates, usages=(ExtendedKeyUsageOID.SERVER_AUTH,), now=None):
    """x509.Certificate.Verify with Roots/Intermediates; ``usages=None`` means ExtKeyUsageAny. Returns the chains."""
    now = now or utcnow()
    roots = roots if isinstance(roots, Pool) else Pool(roots)
    intermediates = intermediates if isinstance(intermediates, Pool) else Pool(intermediates)
    is_valid(leaf, "leaf", [], now)
    if roots.contains(leaf):
        chains = [[leaf]]
    else:
        state = _BuildState()
        chains = build_chains(leaf, [leaf], roots, intermediates, now, state)
        if not chains:
            if state.err is not None:
                raise state.err
            msg = "x509: certificate signed by unknown authority"
            if state.hint is not None:
                msg += " (possibly because of %s while trying to verify candidate authority certificate %s)" % (
                    json.dumps(state.hint[0]), json.dumps(state.hint[1]))
            raise VerifyError(msg)
    if usages is None:
        return chains
    good = [chain for chain in chains if check_chain_eku(chain, usages)]
    if not good:
        raise VerifyError("x509: certificate specifies an incompatible key usage")
    return good


def split_roots(certs):
    """Roots (no AKI, or AKI == SKI) and intermediates, as k3s sorts a bundle."""
    roots, inter = [], []
    for cert in certs:
        if not aki(cert) or aki(cert) == ski(cert):
            roots.append(cert)
        else:
            inter.append(cert)
    return roots, inter


def issuer_changed(leaf, chain_pem, bundle_pem):
    """Why a leaf must be re-issued for the current CA (first cert of the bundle), or None.

    Older deps.go revisions compare the leaf's AKI with the CA's SKI; newer ones Verify the leaf against
    the CA file as a pool. A cross-signed bundle still holds the old root, so a pool Verify alone would
    keep leaves of the old CA: the double applies both (issuer match, then Verify)."""
    signer = parse_certs(bundle_pem)[0]
    leaf_aki, signer_ski = aki(leaf), ski(signer)
    if leaf_aki and signer_ski and leaf_aki != signer_ski:
        return "issuer changed: authority key id does not match the current CA"
    if leaf.issuer.public_bytes() != signer.subject.public_bytes():
        return "issuer changed: %s is not the current CA %s" % (leaf.issuer.rfc4514_string(), signer.subject.rfc4514_string())
    try:
        check_signature(leaf, signer)
        verify_leaf_against_bundle(chain_pem, bundle_pem, usage=None)
    except VerifyError as exc:
        return "issuer changed: %s" % exc
    return None


def hash_ca(data):
    """k3s clientaccess hashCA: one cert -> sha256(bytes); bundle -> sha256(DER of the root of chains[0]); verify error -> raw bytes."""
    certs = parse_certs(data)
    if len(certs) > 1:
        roots, inter = split_roots(certs[1:])
        try:
            chains = go_verify(certs[0], roots, inter)
            return hashlib.sha256(chains[0][-1].public_bytes(serialization.Encoding.DER)).hexdigest()
        except VerifyError:
            pass
    return hashlib.sha256(data).hexdigest()


def hash_ca_or_empty(data):
    try:
        return hash_ca(data)
    except ValueError:
        return ""


def verify_leaf_against_bundle(leaf_chain_pem, bundle_pem, usage):
    """A leaf file (leaf + chain) against a CA file loaded as a Go CertPool (every cert a root)."""
    certs = parse_certs(leaf_chain_pem)
    roots = parse_certs(bundle_pem)
    usages = None if usage is None else (usage,)
    go_verify(certs[0], roots, certs[1:], usages=usages)


# --------------------------------------------------------------------------------------------------
# certificate issuance


def new_ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def name(cn, org=None):
    attrs = []
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def new_self_signed_ca(cn, key, days=3650):
    now = utcnow()
    subject = name(cn)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.KeyUsage(True, True, False, False, False, True, False, False, False), critical=True)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    return builder.sign(key, hashes.SHA256())


def san_list(names):
    out = []
    seen = set()
    for entry in names:
        if not entry or entry in seen:
            continue
        seen.add(entry)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            out.append(x509.DNSName(entry))
    return out


def issue_leaf(ca_cert, ca_key, public_key, cn, org=None, usage=CLIENT, sans=(), days=365):
    now = utcnow()
    ekus = {CLIENT: [ExtendedKeyUsageOID.CLIENT_AUTH], SERVER: [ExtendedKeyUsageOID.SERVER_AUTH],
            BOTH: [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]}[usage]
    builder = (x509.CertificateBuilder().subject_name(name(cn, org)).issuer_name(ca_cert.subject).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    ca_ski = ski(ca_cert)
    if ca_ski:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(ca_ski, None, None), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(san_list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def leaf_table(program):
    """§2.3: file (under server/tls) -> (CN, O, usage, CA field, SAN kind)."""
    return {
        "client-admin": ("system:admin", "system:masters", CLIENT, "ClientCA", None),
        "client-supervisor": ("system:%s-supervisor" % program, "system:masters", CLIENT, "ClientCA", None),
        "client-controller": ("system:kube-controller-manager", None, CLIENT, "ClientCA", None),
        "client-scheduler": ("system:kube-scheduler", None, CLIENT, "ClientCA", None),
        "client-kube-apiserver": ("system:apiserver", "system:masters", CLIENT, "ClientCA", None),
        "client-kube-proxy": ("system:kube-proxy", None, CLIENT, "ClientCA", None),
        "client-%s-controller" % program: ("system:%s-controller" % program, None, CLIENT, "ClientCA", None),
        "client-%s-cloud-controller" % program: ("%s-cloud-controller-manager" % program, None, CLIENT, "ClientCA", None),
        "serving-kube-apiserver": ("kube-apiserver", None, SERVER, "ServerCA", "apiserver"),
        "client-auth-proxy": ("system:auth-proxy", None, CLIENT, "RequestHeaderCA", None),
        "etcd/client": ("etcd-client", None, CLIENT, "ETCDServerCA", None),
        "etcd/server-client": ("etcd-server", None, BOTH, "ETCDServerCA", "etcd"),
        "etcd/peer-server-client": ("etcd-peer", None, BOTH, "ETCDPeerCA", "etcd"),
    }


def version_tuple(version):
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", version)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


def renew_days(version):
    """120 days from v1.33.1 / v1.32.5 / v1.31.9 / v1.30.13 (k3s PR #12232), 90 before."""
    major, minor, patch = version_tuple(version)
    if major != 1:
        return 120
    gates = {33: 1, 32: 5, 31: 9, 30: 13}
    if minor > 33:
        return 120
    return 120 if minor in gates and patch >= gates[minor] else 90


# --------------------------------------------------------------------------------------------------
# token


class TokenError(Exception):
    pass


def parse_token(token, default_user):
    """clientaccess.ParseToken: (ca_hash, user, password)."""
    token = token.strip()
    if not token.startswith("K10"):
        return "", default_user, token
    body = token[3:]
    if "::" not in body:
        raise TokenError("invalid token format")
    ca_hash, creds = body.split("::", 1)
    if len(ca_hash) not in (0, 64):
        raise TokenError("invalid token CA hash length")
    if ":" in creds:
        user, password = creds.split(":", 1)
    else:
        user, password = default_user, creds
    return ca_hash, user, password


def format_token(ca_hash, user, password):
    return "K10%s::%s:%s" % (ca_hash, user, password)


# --------------------------------------------------------------------------------------------------
# configuration (flags > env > config file)

BOOL_FLAGS = {"cluster-init", "force", "help", "debug", "disable-etcd"}
SHORT_FLAGS = {"-t": "token", "-s": "server", "-c": "config", "-d": "data-dir", "-o": "output", "-f": "force", "-h": "help"}
MULTI_KEYS = {"tls-san", "service"}
ENV_KEYS = {"TOKEN": "token", "URL": "server", "AGENT_TOKEN": "agent-token", "TOKEN_FILE": "token-file", "AGENT_TOKEN_FILE": "agent-token-file",
            "NODE_NAME": "node-name", "NODE_IP": "node-ip", "CLUSTER_INIT": "cluster-init", "DATA_DIR": "data-dir", "CONFIG_FILE": "config"}


def parse_flags(args):
    """--key value / --key=value / -k value; returns (dict, positionals)."""
    flags, positionals = {}, []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            positionals.extend(args[index:])
            break
        if arg.startswith("--") or arg in SHORT_FLAGS:
            if arg in SHORT_FLAGS:
                key, value = SHORT_FLAGS[arg], None
            elif "=" in arg:
                key, value = arg[2:].split("=", 1)
            else:
                key, value = arg[2:], None
            if key in BOOL_FLAGS:
                if value is None:
                    value = True
                else:
                    value = value.lower() in ("1", "true", "yes")
            elif value is None:
                if index >= len(args):
                    raise SystemExit("flag needs an argument: %s" % arg)
                value = args[index]
                index += 1
            if key in MULTI_KEYS:
                flags.setdefault(key, []).extend(v for v in str(value).split(",") if v)
            else:
                flags[key] = value
        else:
            positionals.append(arg)
    return flags, positionals


def load_config_files(path):
    """config.yaml then config.yaml.d/*.yaml (lexical order); later files override keys."""
    merged = {}
    files = []
    if os.path.exists(path):
        files.append(path)
    files.extend(sorted(glob.glob(path + ".d/*.yaml")))
    for file_path in files:
        with open(file_path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            fatal("%s: not a mapping" % file_path)
        for key, value in data.items():
            if key.endswith("+"):
                merged.setdefault(key[:-1], [])
                merged[key[:-1]] = list(merged[key[:-1]]) + (value if isinstance(value, list) else [value])
            else:
                merged[key] = value
    return merged


class Flavor:
    def __init__(self, program):
        self.program = program
        self.upper = program.upper()
        self.rke2 = program == "rke2"
        self.supervisor_port = 9345 if self.rke2 else 6443
        self.server_unit = "rke2-server" if self.rke2 else "k3s"
        self.agent_unit = "rke2-agent" if self.rke2 else "k3s-agent"
        self.etc = rooted("/etc/rancher/%s" % program)

    def version(self):
        env = os.environ.get("KUBEPKI_DOUBLE_VERSION")
        if env:
            return env.strip()
        path = os.path.join(self.etc, "lab-version")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                text = handle.read().strip()
            if text:
                return text
        return DEFAULT_VERSIONS[self.program]


def resolve_config(flavor, args):
    flags, positionals = parse_flags(args)
    env = {}
    for suffix, key in ENV_KEYS.items():
        value = os.environ.get("%s_%s" % (flavor.upper, suffix))
        if value:
            env[key] = value
    config_path = flags.get("config") or env.get("config") or os.path.join(flavor.etc, "config.yaml")
    cfg = load_config_files(config_path)
    for source in (env, flags):
        for key, value in source.items():
            if key in MULTI_KEYS:
                cfg[key] = list(value)
            else:
                cfg[key] = value
    if isinstance(cfg.get("cluster-init"), str):
        cfg["cluster-init"] = cfg["cluster-init"].lower() in ("1", "true", "yes")
    for key in MULTI_KEYS:
        if isinstance(cfg.get(key), str):
            cfg[key] = [v for v in cfg[key].split(",") if v]
    cfg.setdefault("data-dir", rooted("/var/lib/rancher/%s" % flavor.program))
    cfg["data-dir"] = str(cfg["data-dir"])
    cfg.setdefault("node-name", socket.gethostname())
    for file_key, key in (("token-file", "token"), ("agent-token-file", "agent-token")):
        if cfg.get(file_key) and not cfg.get(key):
            with open(cfg[file_key], encoding="utf-8") as handle:
                cfg[key] = handle.read().strip()
    return cfg, positionals


def node_ip(cfg):
    if cfg.get("node-ip"):
        return str(cfg["node-ip"]).split(",", maxsplit=1)[0]
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], check=False, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", line)
        if match:
            return match.group(1)
    return "127.0.0.1"


# --------------------------------------------------------------------------------------------------
# datastore (shared directory): encrypted bootstrap data as k3s stores it in etcd, plus node status


def bootstrap_key(password):
    return "/bootstrap/" + hashlib.sha256(password.encode()).hexdigest()[:12]


def encrypt(password, plaintext):
    salt = secrets.token_hex(8)
    key = PBKDF2HMAC(hashes.SHA1(), 32, salt.encode(), 4096).derive(password.encode())
    nonce = os.urandom(12)
    return salt + ":" + base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, None)).decode()


def decrypt(password, value):
    salt, data = value.split(":", 1)
    raw = base64.b64decode(data)
    key = PBKDF2HMAC(hashes.SHA1(), 32, salt.encode(), 4096).derive(password.encode())
    return AESGCM(key).decrypt(raw[:12], raw[12:], None)


def ts_to_str(mtime):
    return datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ts_to_float(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


class Datastore:
    def __init__(self, path):
        self.path = path
        self.file = os.path.join(path, "bootstrap.json")
        self.nodes = os.path.join(path, "nodes")
        self.handle = None

    def __enter__(self):
        os.makedirs(self.path, exist_ok=True)
        self.handle = open(os.path.join(self.path, "lock"), "a+", encoding="utf-8")  # pylint: disable=consider-using-with
        deadline = time.monotonic() + 30
        while True:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.handle.close()
                    fatal("datastore %s: lock not acquired within 30s" % self.path)
                time.sleep(0.05)

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()

    def _raw(self):
        if not os.path.exists(self.file):
            return {}
        with open(self.file, encoding="utf-8") as handle:
            return json.load(handle)

    def load(self, password):
        """The bootstrap map (field -> {Timestamp, Content}) or None when the datastore is empty."""
        raw = self._raw()
        keys = [key for key in raw if key.startswith("/bootstrap/")]
        if not keys:
            return None
        mine = bootstrap_key(password)
        if mine not in raw:
            fatal("bootstrap data already found and encrypted with different token")
        if len(keys) > 1:
            warn("multiple bootstrap keys found in datastore: %s" % ", ".join(sorted(keys)))
        return json.loads(decrypt(password, raw[mine]))

    def save(self, password, data):
        raw = self._raw()
        raw[bootstrap_key(password)] = encrypt(password, json.dumps(data, sort_keys=True).encode())
        atomic_write(self.file, json.dumps(raw, indent=1, sort_keys=True), 0o600)

    def put_node(self, record):
        atomic_write(os.path.join(self.nodes, record["name"] + ".json"), json.dumps(record, sort_keys=True), 0o600)

    def list_nodes(self):
        records = []
        for path in sorted(glob.glob(os.path.join(self.nodes, "*.json"))):
            try:
                with open(path, encoding="utf-8") as handle:
                    records.append(json.load(handle))
            except (OSError, ValueError):
                continue
        return records


def datastore_path(flavor, cfg):
    return str(cfg.get("lab-datastore") or rooted("/var/lib/kubepki-lab/%s/datastore" % flavor.program))


# --------------------------------------------------------------------------------------------------
# HTTPS client


def client_context(cadata=None, cafile=None, cert=None, key=None, verify=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if cadata is not None:
            ctx.load_verify_locations(cadata=cadata.decode() if isinstance(cadata, bytes) else cadata)
        if cafile:
            ctx.load_verify_locations(cafile=cafile)
        # Go pools: every cert of a CA file is a trust anchor.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def https(url, ctx, method="GET", body=None, auth=None, headers=None, timeout=10):
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(parsed.hostname, parsed.port or 443, context=ctx, timeout=timeout)
    hdrs = dict(headers or {})
    if auth:
        hdrs["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % auth).encode()).decode()
    path = parsed.path + ("?" + parsed.query if parsed.query else "")
    try:
        conn.request(method, path or "/", body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_cacerts(server_url, token, default_user):
    """clientaccess.ParseAndValidateToken: /cacerts without verification, again trusting the bundle, then the hash check."""
    ca_hash, user, password = parse_token(token, default_user)
    url = server_url.rstrip("/") + "/cacerts"
    status, data = https(url, client_context(verify=False))
    if status != 200:
        raise TokenError("%s: %d" % (url, status))
    status, again = https(url, client_context(cadata=data))
    if status != 200 or again != data:
        raise TokenError("%s: CA bundle changed or unavailable" % url)
    if ca_hash:
        computed = hash_ca_or_empty(data)
        if ca_hash != computed:
            raise TokenError("token CA hash does not match the Cluster CA certificate hash: %s != %s" % (ca_hash, computed))
    else:
        warn("Cluster CA certificate is not trusted by the host CA bundle, but the token does not include a CA hash. Use the full token from the server's "
             "node-token file to enable Cluster CA validation.")
    return data, user, password


# --------------------------------------------------------------------------------------------------
# server


class Server:
    def __init__(self, flavor, cfg):
        self.flavor = flavor
        self.cfg = cfg
        self.program = flavor.program
        self.data_dir = cfg["data-dir"]
        self.server_dir = os.path.join(self.data_dir, "server")
        self.tls = os.path.join(self.server_dir, "tls")
        self.lab = os.path.join(self.data_dir, "lab")
        self.node = str(cfg["node-name"])
        self.ip = node_ip(cfg)
        self.bind = str(cfg.get("bind-address") or "0.0.0.0")
        self.https_port = int(cfg.get("https-listen-port") or 6443)
        self.supervisor_port = int(cfg.get("lab-supervisor-port") or (flavor.supervisor_port if flavor.rke2 else self.https_port))
        self.version = flavor.version()
        self.datastore = Datastore(datastore_path(flavor, cfg))
        self.password = None
        self.agent_password = None
        self.cacerts_cache = None
        self.httpds = []
        self.etcd = None
        self.stopping = threading.Event()
        self.ready = False
        self.sa_keys = None
        self.local_ip = "127.0.0.1" if self.bind in ("0.0.0.0", "::") else self.bind

    # ---- token / password
    def resolve_password(self):
        token = self.cfg.get("token")
        token_file = os.path.join(self.server_dir, "token")
        if not token and os.path.exists(token_file):
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        if not token:
            if self.cfg.get("server"):
                fatal("starting %s: --token is required when joining a server" % self.program)
            token = secrets.token_hex(16)
        try:
            self.password = parse_token(str(token), "server")[2]
        except TokenError as exc:
            fatal(str(exc))
        agent_token = self.cfg.get("agent-token")
        self.agent_password = parse_token(str(agent_token), "node")[2] if agent_token else self.password

    # ---- bootstrap data
    def path(self, field):
        return os.path.join(self.tls, FIELD_PATHS[field])

    def generate_missing(self):
        """First server: keep CA files found on disk (custom CA), create the rest (§2.1), RSA service.key."""
        prefixes = {"ServerCA": "%s-server" % self.program, "ClientCA": "%s-client" % self.program,
                    "RequestHeaderCA": "%s-request-header" % self.program, "ETCDServerCA": "etcd-server", "ETCDPeerCA": "etcd-peer"}
        for field, prefix in prefixes.items():
            crt, keyp = self.path(field), self.path(field + "Key")
            if os.path.exists(crt) and os.path.exists(keyp):
                continue
            if os.path.exists(crt):
                fatal("%s exists but %s is missing" % (crt, keyp))
            key = new_ec_key()
            cert = new_self_signed_ca("%s-ca@%d" % (prefix, int(time.time())), key)
            atomic_write(keyp, key_pem(key), 0o600)
            atomic_write(crt, cert_pem(cert), 0o644)
        service = self.path("ServiceKey")
        if not os.path.exists(service):
            key = rsa.generate_private_key(65537, 2048)
            atomic_write(service, key_pem(key), 0o600)

    def disk_bootstrap(self):
        data = {}
        for field, rel in FIELDS:
            path = os.path.join(self.tls, rel)
            data[field] = {"Timestamp": ts_to_str(os.stat(path).st_mtime), "Content": base64.b64encode(read_bytes(path)).decode()}
        return data

    def reconcile(self, data):
        """ReconcileBootstrapData: datastore -> disk; a differing disk file >= 3 s newer is fatal."""
        newer = []
        updates = []
        for field, rel in FIELDS:
            entry = data.get(field)
            if not entry:
                continue
            path = os.path.join(self.tls, rel)
            content = base64.b64decode(entry["Content"])
            stamp = ts_to_float(entry["Timestamp"])
            if not os.path.exists(path):
                updates.append((path, content, stamp))
                continue
            if read_bytes(path) == content:
                continue
            disk_mtime = os.stat(path).st_mtime
            if int(disk_mtime) - int(stamp) >= SYSTEM_TIME_SKEW:
                warn("%s is newer than datastore" % path)
                newer.append(path)
            else:
                updates.append((path, content, stamp))
        if newer:
            fatal(", ".join(newer) + " newer than datastore and could cause a cluster outage."
                  " Remove the file(s) from disk and restart to be recreated from datastore.")
        for path, content, stamp in updates:
            info("Reconciling %s from datastore" % path)
            mode = 0o600 if path.endswith(".key") else 0o644
            atomic_write(path, content, mode, mtime=stamp)

    def bootstrap(self):
        deadline = time.monotonic() + float(self.cfg.get("lab-join-timeout") or 60)
        while True:
            with self.datastore as store:
                data = store.load(self.password)
                if data is None and not self.cfg.get("server"):
                    info("Bootstrapping a new cluster: generating certificate authorities")
                    self.generate_missing()
                    data = self.disk_bootstrap()
                    store.save(self.password, data)
                if data is not None:
                    self.reconcile(data)
                    return
            if time.monotonic() > deadline:
                fatal("starting %s: no bootstrap data in datastore %s (is the first server up?)" % (self.program, self.datastore.path))
            info("Waiting for bootstrap data from %s" % self.cfg.get("server"))
            time.sleep(1)

    # ---- leaves
    def ca(self, field):
        certs = parse_certs(read_bytes(self.path(field)))
        key = parse_private_keys(read_bytes(self.path(field + "Key")))[0]
        return certs[0], key

    def sans(self, kind):
        extra = [str(v) for v in (self.cfg.get("tls-san") or [])]
        host = socket.gethostname()
        if kind == "etcd":
            return ["localhost", "kine.sock", "127.0.0.1", "::1", self.ip, host, self.node] + extra
        return ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost", "127.0.0.1", "::1",
                "10.43.0.1", self.ip, host, self.node] + ([self.bind] if self.bind not in ("0.0.0.0", "::") else []) + extra

    def needs_reissue(self, crt_path, key_path, cn, org, ca_field, sans):
        if not os.path.exists(crt_path) or not os.path.exists(key_path):
            return "missing"
        try:
            chain = read_bytes(crt_path)
            certs = parse_certs(chain)
            key = parse_private_keys(read_bytes(key_path))[0]
        except (ValueError, IndexError) as exc:
            return "unreadable: %s" % exc
        leaf = certs[0]
        if pub_der(leaf.public_key()) != pub_der(key.public_key()):
            return "key mismatch"
        reason = issuer_changed(leaf, chain, read_bytes(self.path(ca_field)))
        if reason:
            return reason
        if common_name(leaf) != cn or [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] != ([org] if org else []):
            return "subject changed"
        if sans is not None:
            have = ext_value(leaf, x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
            have_set = set(str(v.value) for v in have) if have is not None else set()
            if set(str(v.value) for v in san_list(sans)) - have_set:
                return "SANs changed"
        left = not_after(leaf) - utcnow()
        if left < datetime.timedelta(days=renew_days(self.version)):
            return "expires within %d days" % renew_days(self.version)
        return None

    def issue_file(self, rel, cn, org, usage, ca_field, sans):
        crt_path = os.path.join(self.tls, rel + ".crt")
        key_path = os.path.join(self.tls, rel + ".key")
        reason = self.needs_reissue(crt_path, key_path, cn, org, ca_field, sans)
        if reason is None:
            return False
        ca_cert, ca_key = self.ca(ca_field)
        key = new_ec_key()
        cert = issue_leaf(ca_cert, ca_key, key.public_key(), cn, org, usage, sans or ())
        info("Issuing %s.crt (%s)" % (rel, reason))
        atomic_write(key_path, key_pem(key), 0o600)
        atomic_write(crt_path, cert_pem(cert) + read_bytes(self.path(ca_field)), 0o644)
        return True

    def ensure_leaves(self):
        for rel, (cn, org, usage, ca_field, san_kind) in leaf_table(self.program).items():
            self.issue_file(rel, cn, org, usage, ca_field, self.sans(san_kind) if san_kind else None)
        # service.current.key, *.nochain.crt
        service_keys = parse_private_keys(read_bytes(self.path("ServiceKey")))
        atomic_write(os.path.join(self.tls, "service.current.key"), key_pem(service_keys[0]), 0o600)
        for field, fname in (("ClientCA", "client-ca.nochain.crt"), ("ServerCA", "server-ca.nochain.crt")):
            atomic_write(os.path.join(self.tls, fname), cert_pem(parse_certs(read_bytes(self.path(field)))[0]), 0o644)
        self.ensure_dynamic_cert()

    def ensure_dynamic_cert(self):
        """dynamiclistener serving cert (CN <program>, O <program>) cached in tls/dynamic-cert.json."""
        path = os.path.join(self.tls, "dynamic-cert.json")
        marker = os.path.join(self.tls, "dynamic-cert-regenerate")
        reason = None
        if os.path.exists(marker):
            reason = "dynamic-cert-regenerate marker"
        elif not os.path.exists(path):
            reason = "missing"
        else:
            try:
                with open(path, encoding="utf-8") as handle:
                    cached = json.load(handle)
                chain = cached["cert"].encode()
                reason = issuer_changed(parse_certs(chain)[0], chain, read_bytes(self.path("ServerCA")))
                have = ext_value(parse_certs(chain)[0], x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
                have_set = set(str(v.value) for v in have) if have is not None else set()
                if reason:
                    pass
                elif set(str(v.value) for v in san_list(self.sans("apiserver"))) - have_set:
                    reason = "SANs changed"
                elif not_after(parse_certs(chain)[0]) - utcnow() < datetime.timedelta(days=renew_days(self.version)):
                    reason = "expiring"
            except (OSError, ValueError, KeyError, VerifyError) as exc:
                reason = "does not verify against the server CA: %s" % exc
        if reason is not None:
            ca_cert, ca_key = self.ca("ServerCA")
            key = new_ec_key()
            cert = issue_leaf(ca_cert, ca_key, key.public_key(), self.program, self.program, SERVER, self.sans("apiserver"))
            info("Regenerating serving certificate (%s)" % reason)
            chain = cert_pem(cert) + read_bytes(self.path("ServerCA"))
            atomic_write(path, json.dumps({"cert": chain.decode(), "key": key_pem(key).decode()}), 0o600)
            if os.path.exists(marker):
                os.unlink(marker)
        with open(path, encoding="utf-8") as handle:
            cached = json.load(handle)
        atomic_write(os.path.join(self.lab, "serving.crt"), cached["cert"], 0o600)
        atomic_write(os.path.join(self.lab, "serving.key"), cached["key"], 0o600)

    # ---- tokens and kubeconfigs
    def write_tokens(self):
        ca_hash = hash_ca(read_bytes(self.path("ServerCA")))
        token_path = os.path.join(self.server_dir, "token")
        atomic_write(token_path, format_token(ca_hash, "server", self.password) + "\n", 0o600)
        for link, target in (("node-token", "token"),):
            self._symlink(os.path.join(self.server_dir, link), target)
        agent_path = os.path.join(self.server_dir, "agent-token")
        if self.cfg.get("agent-token"):
            if os.path.islink(agent_path):
                os.unlink(agent_path)
            atomic_write(agent_path, format_token(ca_hash, "node", self.agent_password) + "\n", 0o600)
        else:
            self._symlink(agent_path, "token")
        return ca_hash

    @staticmethod
    def _symlink(path, target):
        if os.path.islink(path) and os.readlink(path) == target:
            return
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(target, path)

    def write_kubeconfigs(self):
        cred = os.path.join(self.server_dir, "cred")
        url = "https://127.0.0.1:%d" % self.https_port if self.bind in ("0.0.0.0", "::") else "https://%s:%d" % (self.bind, self.https_port)
        for name_, leaf in (("admin", "client-admin"), ("supervisor", "client-supervisor"), ("controller", "client-controller"),
                            ("scheduler", "client-scheduler"), ("api-server", "client-kube-apiserver"),
                            ("cloud-controller", "client-%s-cloud-controller" % self.program)):
            text = kubeconfig_text(url, ca_file=self.path("ServerCA"), cert_file=os.path.join(self.tls, leaf + ".crt"),
                                   key_file=os.path.join(self.tls, leaf + ".key"))
            atomic_write(os.path.join(cred, name_ + ".kubeconfig"), text, 0o600)
        embedded = kubeconfig_text(url, ca_data=read_bytes(self.path("ServerCA")), cert_data=read_bytes(os.path.join(self.tls, "client-admin.crt")),
                                   key_data=read_bytes(os.path.join(self.tls, "client-admin.key")))
        target = str(self.cfg.get("write-kubeconfig") or os.path.join(self.flavor.etc, "%s.yaml" % self.program))
        atomic_write(target, embedded, int(str(self.cfg.get("write-kubeconfig-mode") or "600"), 8))

    # ---- run
    def run(self):
        os.makedirs(self.lab, exist_ok=True)
        info("Starting %s %s (lab double) as server %s on %s" % (self.program, self.version, self.node, self.ip))
        stage_rke2_binaries(self.flavor, self.cfg, self.version)
        self.resolve_password()
        joining = bool(self.cfg.get("server"))
        etcd_dir = os.path.join(self.server_dir, "db", "etcd")
        initialised = os.path.isdir(os.path.join(etcd_dir, "member"))
        if joining and not initialised:
            # First join: the token's CA hash is enforced against the cluster (retried like upstream).
            self.validate_join_token()
        self.bootstrap()
        self.ensure_leaves()
        # kube-apiserver reads --service-account-{signing-,}key-file once at start.
        self.sa_keys = ServiceAccountKeys.load(self.tls, self.program)
        info("ServiceAccount tokens: signing key id %s, %d verification key(s): %s" % (
            self.sa_keys.signing_kid, len(self.sa_keys.public_keys), ", ".join(kid for kid, _key in self.sa_keys.public_keys)))
        ca_hash = self.write_tokens()
        info("Server token written (CA hash %s)" % ca_hash)
        self.write_kubeconfigs()
        self.start_https()
        if not self.cfg.get("disable-etcd"):
            self.etcd = Etcd(self, etcd_dir)
            self.etcd.start(self.cfg.get("server") if (joining and not initialised) else None)
            if not self.etcd.wait_healthy(float(self.cfg.get("lab-etcd-timeout") or 60)):
                fatal("etcd did not become healthy: %s" % self.etcd.last_error)
        agent = Agent(self.flavor, self.cfg, embedded=self)
        agent.register()
        self.ready = True
        mark_ready(self.lab, self.flavor.server_unit)
        info("%s is up and running" % self.program)
        agent.heartbeat_loop(self.stopping, self.etcd)

    def validate_join_token(self):
        deadline = time.monotonic() + float(self.cfg.get("lab-join-timeout") or 60)
        while True:
            try:
                get_cacerts(str(self.cfg["server"]), str(self.cfg.get("token") or ""), "server")
                return
            except (TokenError, OSError, ssl.SSLError, http.client.HTTPException) as exc:
                error("failed to validate token: %s" % exc if not isinstance(exc, TokenError) else str(exc))
            if time.monotonic() > deadline:
                fatal("lab: giving up joining %s after %ss" % (self.cfg["server"], self.cfg.get("lab-join-timeout") or 60))
            self.stopping.wait(RETRY_INTERVAL)

    def start_https(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(self.lab, "serving.crt"), os.path.join(self.lab, "serving.key"))
        ctx.load_verify_locations(cafile=self.path("ClientCA"))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ports = sorted({self.https_port, self.supervisor_port})
        for port in ports:
            httpd = TLSServer((self.bind, port), Handler, ctx, self)
            thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
            thread.start()
            self.httpds.append(httpd)
            info("Listening on %s:%d" % (self.bind, port))

    def shutdown(self):
        self.stopping.set()
        for httpd in self.httpds:
            httpd.shutdown()
            httpd.server_close()
        if self.etcd:
            self.etcd.stop()

    # ---- request helpers
    def cacerts(self):
        if self.cacerts_cache is None:
            self.cacerts_cache = read_bytes(self.path("ServerCA"))
        return self.cacerts_cache

    def check_basic(self, header, users):
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, password = base64.b64decode(header[6:]).decode().split(":", 1)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        expected = {"server": self.password, "node": self.agent_password}
        if user in users and secrets.compare_digest(password, expected.get(user) or "\0"):
            return user
        return None

    def sign_csr(self, kind, csr_pem, node, node_addr):
        csr = x509.load_pem_x509_csr(csr_pem)
        if kind == "serving-kubelet":
            ca_field, cn, org, usage, sans = "ServerCA", node, None, SERVER, [node, "localhost", "127.0.0.1"]
            if node_addr:
                sans.append(node_addr)
        elif kind == "client-kubelet":
            ca_field, cn, org, usage, sans = "ClientCA", "system:node:%s" % node, "system:nodes", CLIENT, ()
        elif kind == "client-kube-proxy":
            ca_field, cn, org, usage, sans = "ClientCA", "system:kube-proxy", None, CLIENT, ()
        elif kind == "client-%s-controller" % self.program:
            ca_field, cn, org, usage, sans = "ClientCA", "system:%s-controller" % self.program, None, CLIENT, ()
        else:
            return None
        ca_cert, ca_key = self.ca(ca_field)
        cert = issue_leaf(ca_cert, ca_key, csr.public_key(), cn, org, usage, sans)
        return cert_pem(cert) + read_bytes(self.path(ca_field))

    def rotate_ca(self, body, force):
        """caCertReplace: decode, write to .rotate-ca-tmp-*, defaultBootstrap, validateBootstrap, Save."""
        upload = json.loads(body)
        tmp = tempfile.mkdtemp(prefix=".rotate-ca-tmp-", dir=self.server_dir)
        try:
            new_paths = {}
            for field, rel in FIELDS:
                entry = upload.get(field)
                if entry and entry.get("Content"):
                    path = os.path.join(tmp, "tls", rel)
                    mtime = ts_to_float(go_ts_normalise(entry["Timestamp"]))
                    atomic_write(path, base64.b64decode(entry["Content"]), 0o600, mtime=mtime)
                    new_paths[field] = path
                else:
                    new_paths[field] = self.path(field)
            errs = validate_bootstrap({field: self.path(field) for field, rel in FIELDS}, new_paths)
            if errs:
                msg = ", ".join(errs)
                if not force:
                    raise ValueError(msg)
                warn("Save of CA certificates and keys forced, ignoring validation errors: %s" % msg)
            with self.datastore as store:
                data = store.load(self.password) or {}
                for field, path in new_paths.items():
                    if path.startswith(tmp):
                        data[field] = {"Timestamp": ts_to_str(os.stat(path).st_mtime), "Content": base64.b64encode(read_bytes(path)).decode()}
                store.save(self.password, data)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def etcd_health(self):
        if self.etcd is None:
            return True, "etcd disabled"
        return self.etcd.healthy()

    def nodes_json(self):
        with self.datastore as store:
            data = store.load(self.password) or {}
            records = store.list_nodes()
        cas = {field: base64.b64decode(data[field]["Content"]) for field in ("ClientCA", "ServerCA") if field in data}
        items = [node_object(record, cas) for record in records]
        return {"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": str(int(time.time()))}, "items": items}


def go_ts_normalise(text):
    """Accept RFC 3339 with or without fractional seconds / offset and return the datastore form."""
    text = text.strip()
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        raise ValueError("bad timestamp %r" % text)
    base = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    frac = float(match.group(2) or 0)
    if match.group(3) != "Z":
        sign = 1 if match.group(3)[0] == "+" else -1
        hours, minutes = match.group(3)[1:].split(":")
        base -= sign * datetime.timedelta(hours=int(hours), minutes=int(minutes))
    stamp = base.replace(tzinfo=datetime.timezone.utc).timestamp() + frac
    return ts_to_str(stamp)


def validate_bootstrap(old, new):
    """validateBootstrap (pkg/server/cert.go): returns the list of error strings."""
    errs = []
    for field, rel in FIELDS:
        del rel
        if field.endswith("CA"):
            err = validate_ca(old[field], new[field])
            if err:
                errs.append("%s: %s" % (field, err))
            err = validate_ca_key(old[field], old[field + "Key"], new[field], new[field + "Key"])
            if err:
                errs.append("%sKey: %s" % (field, err))
        if field == "ServiceKey":
            err = validate_service_key(old[field], new[field])
            if err:
                errs.append("%s: %s" % (field, err))
    return errs


def parse_pair(parse, old_path, new_path):
    """(old, new, None) parsed with parse(bytes), or (None, None, error) for the first file that fails."""
    try:
        return parse(read_bytes(old_path)), parse(read_bytes(new_path)), None
    except (OSError, ValueError) as exc:
        return None, None, str(exc)


def validate_ca(old_path, new_path):
    if old_path == new_path:
        return None
    old_certs, new_certs, err = parse_pair(parse_certs, old_path, new_path)
    if err or len(new_certs) == 1:
        return err or ("new CA bundle contains only a single certificate but should include root or intermediate CA "
                       "certificates")
    roots, inter = split_roots(old_certs)
    inter = list(inter) + [cert for cert in new_certs[1:] if aki(cert)]
    try:
        go_verify(new_certs[0], roots, inter)
    except VerifyError as exc:
        return "new CA cert cannot be verified using old CA chain: %s" % exc
    return None


def load_x509_key_pair(cert_path, key_path):
    """tls.LoadX509KeyPair: first cert vs first private key."""
    try:
        certs = [der for kind, der in pem_blocks(read_bytes(cert_path)) if kind == "CERTIFICATE"]
        if not certs:
            return "tls: failed to find any PEM data in certificate input"
        keys = [der for kind, der in pem_blocks(read_bytes(key_path)) if kind == "PRIVATE KEY" or kind.endswith(" PRIVATE KEY")]
        if not keys:
            return "tls: failed to find any PEM data in key input"
        cert = x509.load_der_x509_certificate(certs[0])
        key = serialization.load_der_private_key(keys[0], None)
    except (OSError, ValueError) as exc:
        return "tls: %s" % exc
    if pub_der(cert.public_key()) != pub_der(key.public_key()):
        same_type = any(isinstance(cert.public_key(), kind) and isinstance(key.public_key(), kind)
                        for kind in (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey))
        if not same_type:
            return "tls: private key type does not match public key type"
        return "tls: private key does not match public key"
    return None


def validate_ca_key(old_ca, old_key, new_ca, new_key):
    if old_ca == new_ca and old_key == new_key:
        return None
    err = load_x509_key_pair(new_ca, new_key)
    if err:
        return "new CA cert and key cannot be loaded as X590KeyPair: %s" % err
    return None


def validate_service_key(old_path, new_path):
    if old_path == new_path:
        return None
    old_keys, new_keys, err = parse_pair(public_keys_from_pem, old_path, new_path)
    if err:
        return err
    first = pub_der(old_keys[0])
    if any(pub_der(key) == first for key in new_keys):
        return None
    return "old ServiceAccount signing key not in new ServiceAccount key list"


def node_object(record, cas):
    now = time.time()
    age = now - record.get("heartbeat", 0)
    status, reason, message = "True", "KubeletReady", "kubelet is posting ready status"
    problems = []
    for field, key, label in (("ClientCA", "clientCert", "client"), ("ServerCA", "servingCert", "serving")):
        pem = record.get(key)
        if not pem or field not in cas:
            problems.append("no %s certificate" % label)
            continue
        try:
            verify_leaf_against_bundle(pem.encode(), cas[field], usage=None)
        except (VerifyError, ValueError) as exc:
            problems.append("%s certificate does not verify against the cluster %s: %s" % (label, field, exc))
    if age > HEARTBEAT_STALE or record.get("stopped"):
        status, reason, message = "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."
    elif problems:
        status, reason, message = "False", "KubeletNotReady", "; ".join(problems)
    labels = {"kubernetes.io/hostname": record["name"], "kubernetes.io/os": "linux"}
    for role in record.get("roles", []):
        labels["node-role.kubernetes.io/%s" % role] = "true"
    hb = iso(datetime.datetime.fromtimestamp(record.get("heartbeat", 0), datetime.timezone.utc))
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": record["name"], "labels": labels,
                     "creationTimestamp": iso(datetime.datetime.fromtimestamp(record.get("created", now), datetime.timezone.utc))},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": status, "reason": reason, "message": message,
                                   "lastHeartbeatTime": hb, "lastTransitionTime": hb}],
                   "addresses": [{"type": "InternalIP", "address": record.get("address", "")}, {"type": "Hostname", "address": record["name"]}],
                   "nodeInfo": {"kubeletVersion": record.get("version", ""), "operatingSystem": "linux", "architecture": "amd64"}},
    }


# --------------------------------------------------------------------------------------------------
# ServiceAccount tokens (kube-apiserver's TokenRequest / TokenReview, pkg/serviceaccount/jwt.go)
#
# k3s runs the apiserver with --service-account-issuer=https://kubernetes.default.svc.<cluster domain>,
# --api-audiences=<issuer>,<program>, --service-account-key-file=service.key (every key verifies) and
# --service-account-signing-key-file=service.current.key (the first key of service.key signs). The apiserver
# reads those files once at start; so does the double.

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SA_LEEWAY = 60  # go-jose jwt.DefaultLeeway
SA_MIN_SECONDS = 600
SA_DEFAULT_SECONDS = 3600
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
GO_JOSE_CRYPTO_FAILURE = "go-jose/go-jose: error in cryptographic primitive"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    """base64.RawURLEncoding: no padding allowed."""
    if "=" in text or not re.match(r"^[A-Za-z0-9_-]*$", text) or len(text) % 4 == 1:
        raise ValueError("illegal base64 data")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sa_key_id(public_key):
    """keyIDFromPublicKey: RawURLEncoding(sha256(PKIX DER of the public key))."""
    return b64url(hashlib.sha256(pub_der(public_key)).digest())


def go_quote_list(values):
    """Go's %q of a []string: ["a" "b"]."""
    return "[" + " ".join(json.dumps(str(v)) for v in values) + "]"


def sa_uid(namespace, name):
    """Stable uid per ServiceAccount (the double stores no ServiceAccount objects)."""
    digest = hashlib.sha256(("serviceaccount/%s/%s" % (namespace, name)).encode()).hexdigest()
    return "%s-%s-%s-%s-%s" % (digest[:8], digest[8:12], digest[12:16], digest[16:20], digest[20:32])


class ServiceAccountKeys:
    """The signing key and verification keys as the apiserver loaded them at start."""

    def __init__(self, signing_key, public_keys, audiences):
        self.signing_key = signing_key
        self.signing_kid = sa_key_id(signing_key.public_key())
        self.public_keys = [(sa_key_id(key), key) for key in public_keys]
        self.audiences = list(audiences)

    @classmethod
    def load(cls, tls, program):
        signing = parse_private_keys(read_bytes(os.path.join(tls, "service.current.key")))
        if not signing:
            fatal("%s: no private key" % os.path.join(tls, "service.current.key"))
        try:
            public = public_keys_from_pem(read_bytes(os.path.join(tls, "service.key")))
        except ValueError as exc:
            fatal("%s: %s" % (os.path.join(tls, "service.key"), exc))
        return cls(signing[0], public, [SA_ISSUER, program])

    def issue(self, namespace, name, audiences, seconds, now=None):
        now = int(time.time() if now is None else now)
        jti = sa_uid(secrets.token_hex(8), str(time.time_ns()))
        claims = {"aud": list(audiences), "exp": now + seconds, "iat": now, "iss": SA_ISSUER, "jti": jti,
                  "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": sa_uid(namespace, name)}},
                  "nbf": now, "sub": "system:serviceaccount:%s:%s" % (namespace, name)}
        header = b64url(json.dumps({"alg": "RS256", "kid": self.signing_kid}, separators=(",", ":")).encode())
        payload = b64url(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
        signing_input = ("%s.%s" % (header, payload)).encode()
        signature = self.signing_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return "%s.%s.%s" % (header, payload, b64url(signature)), now + seconds

    def review(self, token, requested=None):
        """jwtTokenAuthenticator.AuthenticateToken + the validator: (user, audiences) or raises ValueError(reason).

        Returns None when the token is not one of ours (not a JWT, or another issuer)."""
        token = token.strip()
        parts = token.split(".")
        if token.startswith("{") or len(parts) != 3:
            return None
        try:
            claims = json.loads(b64url_decode(parts[1]))
            header = json.loads(b64url_decode(parts[0]))
            signature = b64url_decode(parts[2])
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(claims, dict) or claims.get("iss") != SA_ISSUER or not isinstance(header, dict):
            return None
        kid = header.get("kid") or ""
        keys = [key for key_id, key in self.public_keys if key_id == kid] if kid else [key for _key_id, key in self.public_keys]
        if not keys:
            raise ValueError("invalid signature, no keys found")
        if header.get("alg") != "RS256":
            raise ValueError("go-jose/go-jose: unexpected signature algorithm %r" % header.get("alg"))
        signing_input = ("%s.%s" % (parts[0], parts[1])).encode()
        verified = False
        for key in keys:
            if not isinstance(key, rsa.RSAPublicKey):
                continue
            try:
                key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
                verified = True
                break
            except InvalidSignature:
                continue
        if not verified:
            raise ValueError(GO_JOSE_CRYPTO_FAILURE)
        token_auds = claims.get("aud") or []
        if isinstance(token_auds, str):
            token_auds = [token_auds]
        if not token_auds:
            token_auds = list(self.audiences)
        wanted = list(requested) if requested else list(self.audiences)
        auds = [aud for aud in token_auds if aud in wanted]
        if not auds:
            raise ValueError("token audiences %s is invalid for the target audiences %s" % (go_quote_list(token_auds), go_quote_list(wanted)))
        now = time.time()
        for claim in ("exp", "nbf", "iat"):
            if claim in claims and not isinstance(claims[claim], (int, float)):
                raise ValueError("json: cannot unmarshal %s into Go struct field Claims.%s of type jwt.NumericDate" % (type(claims[claim]).__name__, claim))
        if "exp" in claims and now - SA_LEEWAY > claims["exp"]:
            raise ValueError("service account token has expired")
        if "nbf" in claims and now + SA_LEEWAY < claims["nbf"]:
            raise ValueError("service account token is not valid yet")
        if "iat" in claims and now + SA_LEEWAY < claims["iat"]:
            raise ValueError("service account token is issued in the future")
        private = claims.get("kubernetes.io")
        if not isinstance(private, dict) or not isinstance(private.get("serviceaccount"), dict):
            raise ValueError("service account token claims could not be validated due to unexpected private claim")
        namespace = private.get("namespace") or ""
        name = private["serviceaccount"].get("name") or ""
        uid = private["serviceaccount"].get("uid") or ""
        if not namespace or not name or claims.get("sub") != "system:serviceaccount:%s:%s" % (namespace, name):
            raise ValueError("service account token claims could not be validated due to unexpected private claim")
        user = {"username": "system:serviceaccount:%s:%s" % (namespace, name), "uid": uid,
                "groups": ["system:serviceaccounts", "system:serviceaccounts:%s" % namespace, "system:authenticated"]}
        if claims.get("jti"):
            user["extra"] = {"authentication.kubernetes.io/credential-id": ["JTI=%s" % claims["jti"]]}
        return user, auds


def api_status(code, reason, message, details=None):
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def token_request(keys, namespace, name, body):
    """POST /api/v1/namespaces/NS/serviceaccounts/NAME/token: (http code, object)."""
    if not DNS_LABEL_RE.match(namespace) or len(namespace) > 63 or not DNS_SUBDOMAIN_RE.match(name) or len(name) > 253:
        return 404, api_status(404, "NotFound", 'serviceaccounts "%s" not found' % name, {"name": name, "kind": "serviceaccounts"})
    try:
        request = json.loads(body or b"{}")
    except ValueError as exc:
        return 400, api_status(400, "BadRequest", "the body of the request was in an unknown format: %s" % exc)
    spec = request.get("spec") or {}
    seconds = spec.get("expirationSeconds")
    seconds = SA_DEFAULT_SECONDS if seconds is None else seconds
    invalid = None
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        invalid = "spec.expirationSeconds: Invalid value: %s: must be an integer" % json.dumps(seconds)
    elif seconds < SA_MIN_SECONDS:
        invalid = "spec.expirationSeconds: Invalid value: %d: may not specify a duration less than 10 minutes" % seconds
    elif seconds > 1 << 32:
        invalid = "spec.expirationSeconds: Invalid value: %d: may not specify a duration larger than 2^32 seconds" % seconds
    elif spec.get("boundObjectRef"):
        invalid = "spec.boundObjectRef: Unsupported value: bound tokens are not modelled by the lab double"
    if invalid:
        return 422, api_status(422, "Invalid", 'TokenRequest.authentication.k8s.io "%s" is invalid: %s' % (name, invalid))
    audiences = [str(a) for a in (spec.get("audiences") or keys.audiences)]
    token, expires = keys.issue(namespace, name, audiences, seconds)
    return 201, {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                 "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
                 "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": None},
                 "status": {"token": token, "expirationTimestamp": iso(datetime.datetime.fromtimestamp(expires, datetime.timezone.utc))}}


def token_review(keys, body):
    """POST /apis/authentication.k8s.io/v1/tokenreviews: (http code, object)."""
    try:
        review = json.loads(body or b"{}")
    except ValueError as exc:
        return 400, api_status(400, "BadRequest", "the body of the request was in an unknown format: %s" % exc)
    spec = review.get("spec") or {}
    token = spec.get("token") or ""
    if not token:
        return 400, api_status(400, "BadRequest", "token is required for TokenReview in authentication")
    requested = [str(a) for a in (spec.get("audiences") or [])]
    status = {"authenticated": False, "user": {}}
    try:
        result = keys.review(token, requested)
    except ValueError as exc:
        result = None
        status["error"] = "[invalid bearer token, %s]" % exc
    else:
        if result is None:
            status["error"] = "invalid bearer token"
    if result is not None:
        user, auds = result
        status = {"authenticated": True, "user": user, "audiences": auds}
    metadata = dict(review.get("metadata") or {})
    metadata.setdefault("creationTimestamp", None)
    return 201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": metadata, "spec": spec, "status": status}


def discovery(path):
    """Legacy discovery documents (enough for kubectl's REST mapper), or None."""
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}
    group = {"name": "authentication.k8s.io", "versions": [{"groupVersion": "authentication.k8s.io/v1", "version": "v1"}],
             "preferredVersion": {"groupVersion": "authentication.k8s.io/v1", "version": "v1"}}
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
    if path == "/apis/authentication.k8s.io":
        return dict(group, kind="APIGroup", apiVersion="v1")
    if path == "/api/v1":
        return {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node", "verbs": ["get", "list"], "shortNames": ["no"]},
            {"name": "serviceaccounts", "singularName": "serviceaccount", "namespaced": True, "kind": "ServiceAccount", "verbs": [],
             "shortNames": ["sa"]},
            {"name": "serviceaccounts/token", "singularName": "", "namespaced": True, "group": "authentication.k8s.io", "version": "v1",
             "kind": "TokenRequest", "verbs": ["create"]}]}
    if path == "/apis/authentication.k8s.io/v1":
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "authentication.k8s.io/v1", "resources": [
            {"name": "tokenreviews", "singularName": "tokenreview", "namespaced": False, "kind": "TokenReview", "verbs": ["create"]}]}
    return None


class TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, ctx, server):
        self.ctx = ctx
        self.k3s = server
        super().__init__(address, handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.settimeout(10)
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        del request, client_address


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "k3s-lab-double"

    def setup(self):
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self.server.k3s.handshake_errors = getattr(self.server.k3s, "handshake_errors", 0) + 1
            raise ConnectionAbortedError(str(exc)) from exc
        super().setup()

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        del format, args

    def reply(self, code, body, ctype="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body, indent=1).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def client_cn(self):
        der = self.request.getpeercert(binary_form=True)
        if not der:
            return None
        return common_name(x509.load_der_x509_certificate(der))

    def unauthorized(self):
        self.reply(401, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized",
                         "code": 401})

    def body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            # Go clients stream bodies of unknown length (kubectl create --raw -f FILE) chunked.
            chunks = []
            for chunk_no in range(100000):
                del chunk_no
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):  # pylint: disable=invalid-name
        srv = self.server.k3s
        path = urllib.parse.urlsplit(self.path).path
        prefix = "/v1-%s/" % srv.program
        if path == "/cacerts":
            return self.reply(200, srv.cacerts(), "text/plain")
        if path == "/ping":
            return self.reply(200, "pong", "text/plain")
        if path.startswith(prefix) and path[len(prefix):] in ("client-ca.crt", "server-ca.crt"):
            if not srv.check_basic(self.headers.get("Authorization"), ("node", "server")):
                return self.unauthorized()
            field = "ClientCA" if path.endswith("client-ca.crt") else "ServerCA"
            return self.reply(200, read_bytes(srv.path(field)), "text/plain")
        if discovery(path) is not None:
            if not self.client_cn():
                return self.unauthorized()
            return self.reply(200, discovery(path))
        if path in ("/readyz", "/livez", "/healthz", "/version", "/api/v1/nodes") or path.startswith("/api/v1/nodes/"):
            if not self.client_cn():
                return self.unauthorized()
            if path == "/version":
                return self.reply(200, {"major": "1", "minor": str(version_tuple(srv.version)[1]), "gitVersion": srv.version, "platform": "linux/amd64"})
            if path == "/api/v1/nodes":
                return self.reply(200, srv.nodes_json())
            if path.startswith("/api/v1/nodes/"):
                wanted = path.rsplit("/", 1)[1]
                for item in srv.nodes_json()["items"]:
                    if item["metadata"]["name"] == wanted:
                        return self.reply(200, item)
                return self.reply(404, {"kind": "Status", "status": "Failure", "message": 'nodes "%s" not found' % wanted, "code": 404})
            if path == "/readyz" and str(srv.cfg.get("lab-fail-readyz", "")).lower() in ("1", "true", "yes"):
                # Fault knob (config key lab-fail-readyz, read at start): only /readyz fails; the server otherwise runs.
                return self.reply(500, "[-]lab-fail-readyz failed: reason: fault injected by the lab config (lab-fail-readyz: true)\n"
                                       "readyz check failed", "text/plain")
            healthy, why = srv.etcd_health()
            if healthy:
                return self.reply(200, "ok", "text/plain")
            return self.reply(500, "[-]etcd failed: %s\n%s check failed" % (why, path.strip("/")), "text/plain")
        return self.reply(404, "404 page not found\n", "text/plain")

    def do_POST(self):  # pylint: disable=invalid-name
        srv = self.server.k3s
        path = urllib.parse.urlsplit(self.path).path
        prefix = "/v1-%s/" % srv.program
        if path == "/lab/heartbeat":
            cn = self.client_cn()
            if not cn or not cn.startswith("system:node:"):
                return self.unauthorized()
            record = json.loads(self.body())
            node = cn[len("system:node:"):]
            record["name"] = node
            record["clientCert"] = cert_pem(x509.load_der_x509_certificate(self.request.getpeercert(binary_form=True))).decode() + record.get("clientChain", "")
            record["heartbeat"] = time.time()
            existing = os.path.join(srv.datastore.nodes, node + ".json")
            try:
                with open(existing, encoding="utf-8") as handle:
                    record["created"] = json.load(handle).get("created", record["heartbeat"])
            except (OSError, ValueError):
                record["created"] = record["heartbeat"]
            srv.datastore.put_node(record)
            servers = [rec["supervisor"] for rec in srv.datastore.list_nodes()
                       if rec.get("supervisor") and time.time() - rec.get("heartbeat", 0) < HEARTBEAT_STALE]
            return self.reply(200, {"ok": True, "servers": sorted(servers)})
        match = re.match(r"^/api/v1/namespaces/([^/]+)/serviceaccounts/([^/]+)/token$", path)
        if match or path == "/apis/authentication.k8s.io/v1/tokenreviews":
            if not self.client_cn():
                return self.unauthorized()
            if srv.sa_keys is None:
                return self.reply(503, api_status(503, "ServiceUnavailable", "the server is starting"))
            ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
            body = self.body()
            if ctype != "application/json":
                return self.reply(415, api_status(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types "
                                                  "include: application/json (lab double)"))
            if match:
                code, obj = token_request(srv.sa_keys, urllib.parse.unquote(match.group(1)), urllib.parse.unquote(match.group(2)), body)
            else:
                code, obj = token_review(srv.sa_keys, body)
            return self.reply(code, obj)
        if path.startswith(prefix) and path.endswith(".crt"):
            if not srv.check_basic(self.headers.get("Authorization"), ("node", "server")):
                return self.unauthorized()
            node = self.headers.get("%s-Node-Name" % srv.program)
            if not node:
                return self.reply(400, "missing node name header\n", "text/plain")
            result = srv.sign_csr(path[len(prefix):-4], self.body(), node, self.headers.get("%s-Node-IP" % srv.program))
            if result is None:
                return self.reply(404, "404 page not found\n", "text/plain")
            return self.reply(200, result, "text/plain")
        return self.reply(404, "404 page not found\n", "text/plain")

    def do_PUT(self):  # pylint: disable=invalid-name
        srv = self.server.k3s
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path != "/v1-%s/cert/cacerts" % srv.program:
            return self.reply(404, "404 page not found\n", "text/plain")
        if not srv.check_basic(self.headers.get("Authorization"), ("server",)):
            return self.unauthorized()
        query = urllib.parse.parse_qs(parsed.query)
        force = (query.get("force") or ["false"])[0].lower() in ("1", "t", "true")
        try:
            srv.rotate_ca(self.body(), force)
        except (ValueError, KeyError, OSError, Fatal) as exc:
            err_id = random.randint(0, 99998)
            error("certificate error ID %d: %s" % (err_id, exc))
            return self.reply(500, "certificate error ID %d" % err_id, "text/plain")
        info("certificate: Cluster Certificate Authority data has been updated, %s must be restarted." % srv.program)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return None


def kubeconfig_text(url, ca_file=None, cert_file=None, key_file=None, ca_data=None, cert_data=None, key_data=None):
    cluster = {"server": url}
    user = {}
    if ca_file:
        cluster["certificate-authority"] = ca_file
    if ca_data:
        cluster["certificate-authority-data"] = base64.b64encode(ca_data).decode()
    if cert_file:
        user["client-certificate"] = cert_file
        user["client-key"] = key_file
    if cert_data:
        user["client-certificate-data"] = base64.b64encode(cert_data).decode()
        user["client-key-data"] = base64.b64encode(key_data).decode()
    doc = {"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "default", "cluster": cluster}],
           "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}], "current-context": "default",
           "preferences": {}, "users": [{"name": "default", "user": user}]}
    return yaml.safe_dump(doc, default_flow_style=False)


def mark_ready(lab, unit):
    # Under lab-service the ready file goes where the service waits for it (a custom data-dir keeps its own lab/).
    lab = os.environ.get("KUBEPKI_DOUBLE_READY_DIR") or lab
    atomic_write(os.path.join(lab, unit + ".ready"), str(os.getpid()), 0o644)


# RKE2 has no kubectl subcommand: at every server/agent start it extracts kubectl (crictl, ctr, ...) from its
# runtime image into <data-dir>/data/<release ref digest>/bin and points the <data-dir>/bin symlink there.
RKE2_RUNTIME_IMAGE = "index.docker.io/rancher/rke2-runtime"
STAGED_KUBECTL = """#!/bin/sh
# kubectl staged by the kubepki lab double at rke2 start (RKE2 extracts the real one from its runtime image).
# Like the real kubectl it has no RKE2 default: --kubeconfig, KUBECONFIG or ~/.kube/config.
exec {python} {double} lab-kubectl "$@"
"""


def rke2_release_dir(version):
    """releaseRefDigest of the runtime image tag: <tag>-<first 12 hex of sha256(image reference)>."""
    tag = version.replace("+", "-")
    return "%s-%s" % (tag, hashlib.sha256(("%s:%s" % (RKE2_RUNTIME_IMAGE, tag)).encode()).hexdigest()[:12])


def stage_rke2_binaries(flavor, cfg, version):
    """RKE2 only: write <data-dir>/data/<release>/bin/kubectl and (re)point <data-dir>/bin at that directory."""
    if not flavor.rke2:
        return None
    data_dir = cfg["data-dir"]
    bin_dir = os.path.join(data_dir, "data", rke2_release_dir(version), "bin")
    os.makedirs(bin_dir, mode=0o755, exist_ok=True)
    script = STAGED_KUBECTL.format(python=shlex.quote(sys.executable or "/usr/bin/python3"), double=shlex.quote(os.path.abspath(__file__)))
    atomic_write(os.path.join(bin_dir, "kubectl"), script, 0o755)
    link = os.path.join(data_dir, "bin")
    if not (os.path.islink(link) and os.readlink(link) == bin_dir):
        if os.path.isdir(link) and not os.path.islink(link):
            fatal("%s is a directory, not the symlink to the staged binaries" % link)
        tmp = "%s.tmp-%d" % (link, os.getpid())
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(bin_dir, tmp)
        os.replace(tmp, link)
    info("Staged kubectl in %s (%s -> %s)" % (bin_dir, link, bin_dir))
    return bin_dir


# --------------------------------------------------------------------------------------------------
# etcd (Debian etcd-server as a child process)


def set_pdeathsig():
    try:
        import ctypes  # pylint: disable=import-outside-toplevel
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Etcd:
    def __init__(self, server, data_dir):
        self.server = server
        self.data_dir = data_dir
        self.tls = os.path.join(server.tls, "etcd")
        self.proc = None
        self.last_error = ""
        self.join_endpoint = None
        self.client_port = int(server.cfg.get("lab-etcd-client-port") or 2379)
        self.peer_port = int(server.cfg.get("lab-etcd-peer-port") or 2380)

    def ctl(self, endpoint, *args, timeout=15):
        cmd = ["etcdctl", "--endpoints=%s" % endpoint, "--cacert=%s" % os.path.join(self.tls, "server-ca.crt"),
               "--cert=%s" % os.path.join(self.tls, "client.crt"), "--key=%s" % os.path.join(self.tls, "client.key"),
               "--dial-timeout=3s", "--command-timeout=5s"] + list(args)
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)

    def peer_url(self):
        return "https://%s:%d" % (self.server.ip, self.peer_port)

    def join(self, server_url):
        host = urllib.parse.urlsplit(server_url).hostname
        endpoint = "https://%s:%d" % (host, self.client_port)
        self.join_endpoint = endpoint
        deadline = time.monotonic() + 60
        while True:
            result = self.ctl(endpoint, "member", "list", "-w", "json")
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                fatal("etcd: cannot list members at %s: %s" % (endpoint, result.stderr.strip()))
            info("Waiting for etcd at %s: %s" % (endpoint, result.stderr.strip()[:200]))
            time.sleep(2)
        for member in json.loads(result.stdout).get("members", []):
            if self.peer_url() in member.get("peerURLs", []) or member.get("name") == self.server.node:
                info("Removing stale etcd member %s" % member.get("name"))
                self.ctl(endpoint, "member", "remove", "%x" % member["ID"])
        # etcd refuses reconfiguration until every member has been connected for a while ("unhealthy cluster"):
        # retry, bounded, as k3s retries its join.
        while True:
            # A voting member, not a learner: learner promotion intermittently left the new member serving as a
            # learner here (etcd 3.4); the lab joins one server at a time, so quorum is regained within seconds.
            result = self.ctl(endpoint, "member", "add", self.server.node, "--peer-urls=%s" % self.peer_url())
            if result.returncode == 0:
                break
            reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "rc=%d" % result.returncode
            if time.monotonic() > deadline:
                fatal("etcd: member add failed: %s" % reason)
            info("etcd: member add not accepted yet (%s); retrying" % reason)
            time.sleep(2)
        match = re.search(r"Member ([0-9a-f]+) added", result.stdout)
        info("etcd: added member %s" % (match.group(1) if match else "?"))
        cluster = re.search(r'ETCD_INITIAL_CLUSTER="([^"]*)"', result.stdout)
        return cluster.group(1) if cluster else "%s=%s" % (self.server.node, self.peer_url())

    def start(self, join_url):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        ip = self.server.ip
        client_urls = ["https://%s:%d" % (ip, self.client_port)]
        if not ip.startswith("127."):
            client_urls.insert(0, "https://127.0.0.1:%d" % self.client_port)
        args = ["etcd", "--name", self.server.node, "--data-dir", self.data_dir, "--logger=zap", "--log-outputs=stderr",
                "--listen-client-urls", ",".join(client_urls), "--advertise-client-urls", "https://%s:%d" % (ip, self.client_port),
                "--listen-peer-urls", self.peer_url(), "--initial-advertise-peer-urls", self.peer_url(),
                "--cert-file", os.path.join(self.tls, "server-client.crt"), "--key-file", os.path.join(self.tls, "server-client.key"),
                "--trusted-ca-file", os.path.join(self.tls, "server-ca.crt"), "--client-cert-auth",
                "--peer-cert-file", os.path.join(self.tls, "peer-server-client.crt"), "--peer-key-file", os.path.join(self.tls, "peer-server-client.key"),
                "--peer-trusted-ca-file", os.path.join(self.tls, "peer-ca.crt"), "--peer-client-cert-auth",
                "--heartbeat-interval", str(self.server.cfg.get("lab-etcd-heartbeat-interval") or 100),
                "--election-timeout", str(self.server.cfg.get("lab-etcd-election-timeout") or 1000)]
        if not os.path.isdir(os.path.join(self.data_dir, "member")):
            if join_url:
                args += ["--initial-cluster", self.join(join_url), "--initial-cluster-state", "existing"]
            else:
                args += ["--initial-cluster", "%s=%s" % (self.server.node, self.peer_url()), "--initial-cluster-state", "new",
                         "--initial-cluster-token", "%s-lab" % self.server.program]
        log_path = os.path.join(self.server.lab, "etcd.log")
        with open(log_path, "ab") as log_handle:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_handle, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                                         preexec_fn=set_pdeathsig, close_fds=True)
        atomic_write(os.path.join(self.server.lab, "etcd.pid"), str(self.proc.pid), 0o644)
        info("Started etcd (pid %d), log %s" % (self.proc.pid, log_path))

    def healthy(self):
        if self.proc is not None and self.proc.poll() is not None:
            return False, "etcd exited with %s" % self.proc.returncode
        ctx = client_context(cafile=os.path.join(self.tls, "server-ca.crt"), cert=os.path.join(self.tls, "client.crt"),
                             key=os.path.join(self.tls, "client.key"))
        try:
            status, body = https("https://%s:%d/health" % (self.server.ip, self.client_port), ctx, timeout=5)
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            return False, str(exc)
        if status == 200 and json.loads(body or b"{}").get("health") == "true":
            return True, "ok"
        return False, body.decode(errors="replace").strip()

    def wait_healthy(self, timeout):
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 5
        while time.monotonic() < deadline:
            if time.monotonic() > next_note:
                info("Waiting for etcd: %s" % self.last_error)
                next_note = time.monotonic() + 5
            if self.proc.poll() is not None:
                self.last_error = "etcd exited with %s (see etcd.log)" % self.proc.returncode
                return False
            ok, why = self.healthy()
            if ok:
                # /health alone is not enough for a member that just joined: ask it like etcdctl would.
                result = self.ctl("https://%s:%d" % (self.server.ip, self.client_port), "endpoint", "health")
                if result.returncode == 0:
                    return True
                why = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["endpoint health failed"]
                why = why[0]
            self.last_error = why
            time.sleep(0.5)
        return False

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


# --------------------------------------------------------------------------------------------------
# agent


class Agent:
    def __init__(self, flavor, cfg, embedded=None):
        self.flavor = flavor
        self.cfg = cfg
        self.program = flavor.program
        self.embedded = embedded
        self.dir = os.path.join(cfg["data-dir"], "agent")
        self.lab = os.path.join(cfg["data-dir"], "lab")
        self.node = str(cfg["node-name"])
        self.ip = node_ip(cfg)
        self.version = flavor.version()
        if embedded is not None:
            self.url = "https://%s:%d" % (embedded.local_ip, embedded.supervisor_port)
            self.api_url = "https://%s:%d" % (embedded.local_ip, embedded.https_port)
            self.token = format_token(hash_ca(read_bytes(embedded.path("ServerCA"))), "server", embedded.password)
        else:
            if not cfg.get("server"):
                fatal("--server is required")
            self.url = str(cfg["server"]).rstrip("/")
            self.api_url = self.url
            token = cfg.get("token") or cfg.get("agent-token")
            if not token:
                fatal("--token is required")
            self.token = str(token)
        self.cacerts = None
        self.user = None
        self.password = None
        self.heartbeat_errors = 0
        # Client load balancer (agent/etc/<p>-agent-load-balancer.json): the configured server first, then the
        # servers learned from earlier heartbeats; a connection failure moves on to the next one.
        self.lb_file = os.path.join(self.dir, "etc", "%s-agent-load-balancer.json" % self.program)
        self.servers = [self.url]
        if embedded is None and os.path.exists(self.lb_file):
            try:
                with open(self.lb_file, encoding="utf-8") as handle:
                    stored = json.load(handle)
                self.servers += ["https://" + addr for addr in stored.get("ServerAddresses", []) if "https://" + addr != self.url]
            except (OSError, ValueError, AttributeError):
                pass

    def remember_servers(self, urls):
        if self.embedded is not None or not urls:
            return
        known = [self.servers[0]] + [url for url in urls if url != self.servers[0]]
        if known != self.servers:
            self.servers = known
            data = {"ServerURL": self.servers[0], "ServerAddresses": [urllib.parse.urlsplit(url).netloc for url in self.servers], "Listener": None}
            atomic_write(self.lb_file, json.dumps(data), 0o600)

    def failover(self):
        if len(self.servers) > 1:
            index = self.servers.index(self.url) if self.url in self.servers else -1
            self.url = self.api_url = self.servers[(index + 1) % len(self.servers)]

    def validate(self, timeout):
        deadline = time.monotonic() + timeout
        unreachable = 0
        while True:
            try:
                self.cacerts, self.user, self.password = get_cacerts(self.url, self.token, "node")
                return
            except TokenError as exc:
                error(str(exc))
                unreachable = 0
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                error("failed to get CA certs from %s: %s" % (self.url, exc))
                self.failover()
                unreachable += 1
                if unreachable < len(self.servers):
                    continue  # the load balancer tries the next server at once
                unreachable = 0
            if time.monotonic() + RETRY_INTERVAL > deadline:
                fatal("lab: giving up after %ds: agent could not validate the server's CA against the token" % timeout)
            time.sleep(RETRY_INTERVAL)

    def ctx(self, cert=None, key=None):
        return client_context(cadata=self.cacerts, cert=cert, key=key)

    def download(self):
        for fname in ("client-ca.crt", "server-ca.crt"):
            status, data = https("%s/v1-%s/%s" % (self.url, self.program, fname), self.ctx(), auth=(self.user, self.password))
            if status != 200:
                fatal("failed to retrieve %s: %d %s" % (fname, status, data.decode(errors="replace").strip()))
            atomic_write(os.path.join(self.dir, fname), data, 0o644)

    def request_cert(self, kind):
        key_path = os.path.join(self.dir, kind + ".key")
        if os.path.exists(key_path):
            key = parse_private_keys(read_bytes(key_path))[0]
        else:
            key = new_ec_key()
            atomic_write(key_path, key_pem(key), 0o600)
        csr = x509.CertificateSigningRequestBuilder().subject_name(name(self.node)).sign(key, hashes.SHA256())
        headers = {"%s-Node-Name" % self.program: self.node, "%s-Node-IP" % self.program: self.ip, "Content-Type": "application/x-pem-file"}
        status, data = https("%s/v1-%s/%s.crt" % (self.url, self.program, kind), self.ctx(), method="POST",
                             body=csr.public_bytes(serialization.Encoding.PEM), auth=(self.user, self.password), headers=headers)
        if status != 200:
            fatal("failed to retrieve %s.crt: %d %s" % (kind, status, data.decode(errors="replace").strip()))
        atomic_write(os.path.join(self.dir, kind + ".crt"), data, 0o644)

    def register(self):
        os.makedirs(self.dir, exist_ok=True)
        self.validate(float(self.cfg.get("lab-agent-timeout") or os.environ.get("KUBEPKI_DOUBLE_AGENT_TIMEOUT") or 60))
        self.download()
        password_file = rooted("/etc/rancher/node/password")
        if not os.path.exists(password_file):
            atomic_write(password_file, secrets.token_hex(16) + "\n", 0o600)
        for kind in ("serving-kubelet", "client-kubelet", "client-kube-proxy", "client-%s-controller" % self.program):
            self.request_cert(kind)
        ca = os.path.join(self.dir, "server-ca.crt")
        for fname, leaf in (("kubelet.kubeconfig", "client-kubelet"), ("kubeproxy.kubeconfig", "client-kube-proxy"),
                            ("%scontroller.kubeconfig" % self.program, "client-%s-controller" % self.program)):
            text = kubeconfig_text(self.api_url, ca_file=ca, cert_file=os.path.join(self.dir, leaf + ".crt"), key_file=os.path.join(self.dir, leaf + ".key"))
            atomic_write(os.path.join(self.dir, fname), text, 0o600)
        info("Agent %s registered with %s" % (self.node, self.url))
        self.heartbeat()

    def heartbeat(self):
        record = {"roles": ["control-plane", "etcd", "master"] if self.embedded is not None else [], "address": self.ip, "version": self.version,
                  "servingCert": read_bytes(os.path.join(self.dir, "serving-kubelet.crt")).decode()}
        if self.embedded is not None:
            record["supervisor"] = "https://%s:%d" % (self.ip, self.embedded.supervisor_port)
        chain = parse_certs(read_bytes(os.path.join(self.dir, "client-kubelet.crt")))
        record["clientChain"] = "".join(cert_pem(cert).decode() for cert in chain[1:])
        ctx = client_context(cafile=os.path.join(self.dir, "server-ca.crt"), cert=os.path.join(self.dir, "client-kubelet.crt"),
                             key=os.path.join(self.dir, "client-kubelet.key"))
        try:
            status, body = https(self.api_url + "/lab/heartbeat", ctx, method="POST", body=json.dumps(record).encode(),
                                 headers={"Content-Type": "application/json"}, timeout=5)
            if status != 200:
                raise OSError("heartbeat: %d %s" % (status, body.decode(errors="replace")[:200]))
            self.remember_servers(json.loads(body).get("servers", []))
            if self.heartbeat_errors:
                info("Node status update succeeded again")
            self.heartbeat_errors = 0
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            self.heartbeat_errors += 1
            if self.heartbeat_errors in (1, 10) or self.heartbeat_errors % 100 == 0:
                error("Error updating node status via %s: %s" % (self.api_url, exc))
            if self.embedded is None:
                self.failover()

    def heartbeat_loop(self, stopping, etcd=None):
        while not stopping.wait(HEARTBEAT_INTERVAL):
            if etcd is not None and etcd.proc is not None and etcd.proc.poll() is not None:
                fatal("etcd exited unexpectedly with %s" % etcd.proc.returncode)
            self.heartbeat()

    def run(self):
        os.makedirs(self.lab, exist_ok=True)
        info("Starting %s agent %s (lab double) for %s" % (self.program, self.version, self.node))
        stage_rke2_binaries(self.flavor, self.cfg, self.version)
        self.register()
        mark_ready(self.lab, self.flavor.agent_unit)
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
        self.heartbeat_loop(stopping)


# --------------------------------------------------------------------------------------------------
# CLI: certificate rotate-ca / rotate / check


def cmd_rotate_ca(flavor, args):
    cfg, positionals = resolve_config(flavor, args)
    del positionals
    path = cfg.get("path")
    if not path:
        fatal("--path is required")
    server_url = str(cfg.get("server") or "https://127.0.0.1:%d" % flavor.supervisor_port)
    token_file = os.path.join(cfg["data-dir"], "server", "token")
    try:
        with open(token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        fatal("failed to read token: %s" % exc)
    try:
        cacerts, user, password = get_cacerts(server_url, token, "server")
    except (TokenError, OSError, ssl.SSLError, http.client.HTTPException) as exc:
        fatal(str(exc))
    body = {}
    for field, rel in FIELDS:
        fpath = os.path.join(str(path), "tls", rel)
        if not os.path.exists(fpath):
            warn("failed to read %s: open %s: no such file or directory" % (field, fpath))
            continue
        body[field] = {"Timestamp": ts_to_str(os.stat(fpath).st_mtime), "Content": base64.b64encode(read_bytes(fpath)).decode()}
    force = bool(cfg.get("force"))
    url = "%s/v1-%s/cert/cacerts?force=%s" % (server_url.rstrip("/"), flavor.program, "true" if force else "false")
    status, data = https(url, client_context(cadata=cacerts), method="PUT", body=json.dumps(body).encode(), auth=(user, password),
                         headers={"Content-Type": "application/json"}, timeout=60)
    if status not in (200, 204):
        fatal("see server log for details: %s: %d %s" % (url, status, data.decode(errors="replace").strip()))
    print("certificates saved to datastore")
    return 0


def services_for(program):
    agent = ["kube-proxy", "kubelet", "%s-controller" % program]
    server = ["admin", "api-server", "auth-proxy", "cloud-controller", "controller-manager", "etcd", "scheduler", "supervisor", "%s-server" % program]
    return agent, server


def rotate_files(program, service):
    table = {
        "admin": ["st/client-admin.crt", "st/client-admin.key"],
        "api-server": ["st/client-kube-apiserver.crt", "st/client-kube-apiserver.key", "st/serving-kube-apiserver.crt", "st/serving-kube-apiserver.key"],
        "controller-manager": ["st/client-controller.crt", "st/client-controller.key"],
        "scheduler": ["st/client-scheduler.crt", "st/client-scheduler.key"],
        "etcd": ["st/etcd/client.crt", "st/etcd/client.key", "st/etcd/server-client.crt", "st/etcd/server-client.key",
                 "st/etcd/peer-server-client.crt", "st/etcd/peer-server-client.key"],
        "cloud-controller": ["st/client-%s-cloud-controller.crt" % program, "st/client-%s-cloud-controller.key" % program],
        "%s-controller" % program: ["st/client-%s-controller.crt" % program, "st/client-%s-controller.key" % program,
                                    "ag/client-%s-controller.crt" % program, "ag/client-%s-controller.key" % program],
        "supervisor": ["st/client-supervisor.crt", "st/client-supervisor.key"],
        "auth-proxy": ["st/client-auth-proxy.crt", "st/client-auth-proxy.key"],
        "kubelet": ["st/client-kubelet.key", "st/serving-kubelet.key", "ag/client-kubelet.crt", "ag/client-kubelet.key", "ag/serving-kubelet.crt",
                    "ag/serving-kubelet.key"],
        "kube-proxy": ["st/client-kube-proxy.crt", "st/client-kube-proxy.key", "ag/client-kube-proxy.crt", "ag/client-kube-proxy.key"],
        "%s-server" % program: [],
    }
    return table[service]


def supervisor_rotatable(version):
    return version_tuple(version) >= (1, 32, 0)


def cmd_rotate(flavor, args):
    cfg, positionals = resolve_config(flavor, args)
    del positionals
    data_dir = cfg["data-dir"]
    agent_services, server_services = services_for(flavor.program)
    is_server = os.path.isdir(os.path.join(data_dir, "server"))
    known = agent_services + (server_services if is_server else [])
    if not supervisor_rotatable(flavor.version()):
        known = [s for s in known if s != "supervisor"]
    wanted = list(cfg.get("service") or [])
    for service in wanted:
        if service not in known:
            fatal("%s is not a recognized service" % service)
    if not wanted:
        wanted = known
    tls_dir = os.path.join(data_dir, "server", "tls")
    agent_dir = os.path.join(data_dir, "agent")
    stamp = int(time.time())
    backup = os.path.join(data_dir, "server", "tls-%d" % stamp) if is_server else os.path.join(agent_dir, "tls-%d" % stamp)
    if is_server and os.path.isdir(tls_dir):
        shutil.copytree(tls_dir, backup, symlinks=True)
    os.makedirs(backup, exist_ok=True)
    for fname in glob.glob(os.path.join(agent_dir, "*.crt")) + glob.glob(os.path.join(agent_dir, "*.key")):
        shutil.copy2(fname, os.path.join(backup, os.path.basename(fname)))
    for service in wanted:
        info("Rotating certificates for %s service" % service)
        if service == "%s-server" % flavor.program and is_server:
            atomic_write(os.path.join(tls_dir, "dynamic-cert-regenerate"), "", 0o600)
        for entry in rotate_files(flavor.program, service):
            base = tls_dir if entry.startswith("st/") else agent_dir
            target = os.path.join(base, entry[3:])
            if os.path.exists(target):
                os.unlink(target)
    if flavor.rke2:
        atomic_write(os.path.join(data_dir, "force-restart"), "", 0o600)
    info("Successfully backed up certificates to %s, please restart %s server or agent to rotate certificates" % (backup, flavor.program))
    return 0


def cert_files(data_dir):
    files = []
    for pattern in ("server/tls/*.crt", "server/tls/etcd/*.crt", "agent/*.crt"):
        files.extend(sorted(glob.glob(os.path.join(data_dir, pattern))))
    return files


def usages_text(cert):
    out = []
    ku = ext_value(cert, x509.oid.ExtensionOID.KEY_USAGE)
    bc = ext_value(cert, x509.oid.ExtensionOID.BASIC_CONSTRAINTS)
    if bc is not None and bc.ca:
        out.append("CertSign")
    eku = ext_value(cert, x509.oid.ExtensionOID.EXTENDED_KEY_USAGE)
    for oid in (list(eku) if eku is not None else []):
        out.append({ExtendedKeyUsageOID.SERVER_AUTH: "ServerAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "ClientAuth"}.get(oid, oid.dotted_string))
    if not out and ku is not None and ku.digital_signature:
        out.append("DigitalSignature")
    return ",".join(out)


def cmd_check(flavor, args):
    cfg, positionals = resolve_config(flavor, args)
    del positionals
    output = str(cfg.get("output") or "text")
    threshold = datetime.timedelta(days=renew_days(flavor.version()))
    now = utcnow()
    rows = []
    for path in cert_files(cfg["data-dir"]):
        try:
            certs = parse_certs(read_bytes(path))
        except ValueError:
            continue
        for cert in certs:
            residual = not_after(cert) - now
            if now < not_before(cert):
                status = "NOT YET VALID"
            elif residual.total_seconds() <= 0:
                status = "EXPIRED"
            elif residual < threshold:
                status = "WARNING"
            else:
                status = "OK"
            rows.append({"filename": os.path.relpath(path, cfg["data-dir"]), "subject": cert.subject.rfc4514_string(), "usages": usages_text(cert),
                         "expiryTime": iso(not_after(cert)), "residualTime": "%dd" % max(residual.days, 0), "status": status})
    if output == "json":
        print(json.dumps(rows, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(rows, default_flow_style=False), end="")
    elif output == "table":
        print("%-45s %-50s %-22s %-22s %-14s %s" % ("FILENAME", "SUBJECT", "USAGES", "EXPIRES", "RESIDUAL TIME", "STATUS"))
        for row in rows:
            print("%-45s %-50s %-22s %-22s %-14s %s" % (row["filename"], row["subject"], row["usages"], row["expiryTime"], row["residualTime"], row["status"]))
    else:
        for row in rows:
            info("%s: certificate %s is %s until %s" % (row["filename"], row["subject"], row["status"], row["expiryTime"]))
    return 0


# --------------------------------------------------------------------------------------------------
# kubectl


def load_kubeconfig(path):
    with open(path, encoding="utf-8") as handle:
        doc = yaml.safe_load(handle)
    cluster = doc["clusters"][0]["cluster"]
    user = doc["users"][0]["user"]
    tmp = tempfile.mkdtemp(prefix="kubepki-kubectl-")
    ca = cluster.get("certificate-authority")
    if cluster.get("certificate-authority-data"):
        ca = os.path.join(tmp, "ca.crt")
        atomic_write(ca, base64.b64decode(cluster["certificate-authority-data"]))
    cert, key = user.get("client-certificate"), user.get("client-key")
    if user.get("client-certificate-data"):
        cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        atomic_write(cert, base64.b64decode(user["client-certificate-data"]))
        atomic_write(key, base64.b64decode(user["client-key-data"]))
    try:
        ctx = client_context(cafile=ca, cert=cert, key=key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cluster["server"], ctx


KUBECTL_USAGE = ("lab double kubectl supports: get --raw PATH, get nodes [NAME] [-o json|wide|name], create token NAME [-n NS] [--duration D] "
                 "[--audience A], create -f FILE [-o json|yaml|name], create --raw PATH -f FILE\n")


def go_duration_seconds(text):
    """time.ParseDuration for h/m/s/ms/us/ns; returns float seconds or raises ValueError."""
    text = str(text).strip()
    if text in ("0", ""):
        return 0.0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)", text)
    if not parts or "".join(a + b for a, b in parts) != text.lstrip("+"):
        raise ValueError('time: invalid duration "%s"' % text)
    return sum(float(number) * units[unit] for number, unit in parts)


def status_reason_message(status, body):
    """(reason, message) of an API Status body."""
    text = body.decode(errors="replace").strip()
    try:
        obj = json.loads(body)
    except ValueError:
        return str(status), text
    if not isinstance(obj, dict):
        return str(status), text
    return str(obj.get("reason") or status), str(obj.get("message") or text)


def kubectl_error(status, body):
    """Error from server (Reason): message."""
    return "Error from server (%s): %s" % status_reason_message(status, body)


def kubectl_print(obj, output):
    if output == "json":
        print(json.dumps(obj, indent=4))
    elif output == "yaml":
        sys.stdout.write(yaml.safe_dump(obj, default_flow_style=False))
    else:
        name_ = (obj.get("metadata") or {}).get("name") or "<unknown>"
        print("%s.authentication.k8s.io/%s%s" % (obj.get("kind", "").lower(), name_, "" if output == "name" else " created"))


def kubectl_create(server, ctx, flags, positionals):
    """create token NAME, create -f FILE (TokenReview), create --raw PATH -f FILE."""
    def post(path, body):
        return https(server.rstrip("/") + path, ctx, method="POST", body=body, headers={"Content-Type": "application/json", "Accept": "application/json"},
                     timeout=10)
    if len(positionals) >= 2 and positionals[1] == "token":
        if len(positionals) != 3:
            sys.stderr.write("error: exactly one NAME is required, got %d\n" % (len(positionals) - 2))
            return 1
        namespace = str(flags.get("namespace") or "default")
        spec = {"audiences": [str(a) for a in str(flags.get("audience") or "").split(",") if a] or None, "boundObjectRef": None}
        try:
            seconds = go_duration_seconds(flags.get("duration") or "0")
        except ValueError as exc:
            sys.stderr.write('error: invalid argument "%s" for "--duration" flag: %s\n' % (flags.get("duration"), exc))
            return 1
        if seconds != int(seconds):
            sys.stderr.write("error: --duration cannot be expressed in units less than seconds\n")
            return 1
        if seconds:
            spec["expirationSeconds"] = int(seconds)
        body = json.dumps({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {"creationTimestamp": None}, "spec": spec})
        status, data = post("/api/v1/namespaces/%s/serviceaccounts/%s/token" % (urllib.parse.quote(namespace), urllib.parse.quote(positionals[2])),
                            body.encode())
        if status >= 300:
            sys.stderr.write("error: failed to create token: %s\n" % status_reason_message(status, data)[1])
            return 1
        token = json.loads(data).get("status", {}).get("token")
        if not token:
            sys.stderr.write("error: failed to create token: no token in server response\n")
            return 1
        print(token)
        return 0
    filename = flags.get("filename")
    if len(positionals) != 1 or not filename:
        sys.stderr.write(KUBECTL_USAGE)
        return 1
    try:
        if filename == "-":
            content = sys.stdin.buffer.read()
        else:
            with open(filename, "rb") as handle:
                content = handle.read()
    except OSError as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 1
    if flags.get("raw"):
        status, data = post(str(flags["raw"]), content)
        sys.stdout.write(data.decode(errors="replace"))
        if status >= 300:
            sys.stderr.write("%s\n" % kubectl_error(status, data))
            return 1
        return 0
    try:
        obj = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        sys.stderr.write("error: error parsing %s: %s\n" % (filename, exc))
        return 1
    if not isinstance(obj, dict) or (obj.get("apiVersion"), obj.get("kind")) != ("authentication.k8s.io/v1", "TokenReview"):
        kind = obj.get("kind") if isinstance(obj, dict) else None
        version = obj.get("apiVersion") if isinstance(obj, dict) else None
        sys.stderr.write('error: resource mapping not found for name: "" namespace: "" from "%s": no matches for kind "%s" in version "%s" '
                         "(the lab double creates only TokenReview)\n" % (filename, kind, version))
        return 1
    status, data = post("/apis/authentication.k8s.io/v1/tokenreviews", json.dumps(obj).encode())
    if status >= 300:
        sys.stderr.write("%s\n" % kubectl_error(status, data))
        return 1
    kubectl_print(json.loads(data), flags.get("output"))
    return 0


def go_quote(text):
    """Go's strconv.Quote (fmt %q): double quotes, backslash escapes for quotes, backslashes and control characters."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"%s"' % "".join(escapes.get(ch) or ("\\x%02x" % ord(ch) if ord(ch) < 0x20 or ord(ch) == 0x7f else ch) for ch in text)


def cmd_kubectl(flavor, args, standalone=False):
    """`k3s kubectl ...`, or (standalone) the kubectl that RKE2 stages: no distribution default kubeconfig."""
    translated = {"-n": "--namespace", "-f": "--filename"}
    flags, positionals = parse_flags([translated.get(arg, arg) for arg in args])
    kubeconfig = flags.get("kubeconfig")
    if not kubeconfig and standalone:
        # client-go: the KUBECONFIG list (first existing file here, no merging), else ~/.kube/config.
        candidates = [c for c in os.environ.get("KUBECONFIG", "").split(os.pathsep) if c] or [os.path.expanduser("~/.kube/config")]
        kubeconfig = next((c for c in candidates if os.path.exists(c)), None)
    elif not kubeconfig:
        kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig and not standalone:
        candidates = [os.path.join(flavor.etc, "%s.yaml" % flavor.program), rooted("/var/lib/rancher/%s/server/cred/admin.kubeconfig" % flavor.program)]
        kubeconfig = next((c for c in candidates if os.path.exists(c)), candidates[0])
    if len(positionals) < 1 or positionals[0] not in ("get", "create"):
        sys.stderr.write(KUBECTL_USAGE)
        return 1
    if not kubeconfig:
        sys.stderr.write("The connection to the server localhost:8080 was refused - did you specify the right host or port?\n")
        return 1
    try:
        server, ctx = load_kubeconfig(kubeconfig)
    except (OSError, KeyError, IndexError, TypeError, ssl.SSLError) as exc:
        sys.stderr.write("error: loading kubeconfig %s: %s\n" % (kubeconfig, exc))
        return 1
    if positionals[0] == "create":
        try:
            return kubectl_create(server, ctx, flags, positionals)
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            sys.stderr.write("Unable to connect to the server: %s\n" % exc)
            return 1
    raw = flags.get("raw")
    path = raw if raw else "/api/v1/nodes"
    try:
        status, body = https(server.rstrip("/") + path, ctx, timeout=10)
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        sys.stderr.write("Unable to connect to the server: %s\n" % exc)
        return 1
    if raw:
        if status >= 400:
            # As kubectl (client-go's NewGenericServerResponse): nothing on stdout, the body Go-quoted (%q) on one line.
            sys.stderr.write("Error from server (InternalError): an error on the server (%s) has prevented the request from succeeding\n"
                             % go_quote(body.decode(errors="replace").strip()))
            return 1
        sys.stdout.write(body.decode(errors="replace"))
        return 0
    if status >= 400:
        sys.stderr.write("error: You must be logged in to the server (%s)\n" % body.decode(errors="replace").strip())
        return 1
    data = json.loads(body)
    items = data["items"]
    if len(positionals) > 2:
        items = [item for item in items if item["metadata"]["name"] in positionals[2:]]
        if not items:
            sys.stderr.write('Error from server (NotFound): nodes "%s" not found\n' % positionals[2])
            return 1
    output = flags.get("output")
    if output == "json":
        if len(positionals) > 2 and len(items) == 1:
            print(json.dumps(items[0], indent=4))
        else:
            print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}, indent=4))
        return 0
    if output == "name":
        for item in items:
            print("node/" + item["metadata"]["name"])
        return 0
    print("%-12s %-10s %-28s %-6s %s" % ("NAME", "STATUS", "ROLES", "AGE", "VERSION"))
    for item in items:
        ready = item["status"]["conditions"][0]["status"]
        roles = ",".join(sorted(k.split("/", 1)[1] for k in item["metadata"]["labels"] if k.startswith("node-role.kubernetes.io/"))) or "<none>"
        state = "Ready" if ready == "True" else "NotReady"
        print("%-12s %-10s %-28s %-6s %s" % (item["metadata"]["name"], state, roles, "-", item["status"]["nodeInfo"]["kubeletVersion"]))
    return 0


# --------------------------------------------------------------------------------------------------
# services (init scripts) and install

UNITS = {
    "k3s": ("k3s", "server"), "k3s-agent": ("k3s", "agent"),
    "rke2-server": ("rke2", "server"), "rke2-agent": ("rke2", "agent"),
}


def unit_exec_args(unit, program, role):
    """Arguments after the binary in the unit's ExecStart (so --token there is honoured), else the role."""
    dirs = ["/etc/systemd/system"] if program == "k3s" else ["/etc/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system"]
    for directory in dirs:
        path = rooted("%s/%s.service" % (directory, unit))
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as handle:
            text = handle.read().replace("\\\n", " ")
        for line in text.splitlines():
            if line.strip().startswith("ExecStart="):
                words = shlex.split(line.strip()[len("ExecStart="):])
                if words and os.path.basename(words[0]) in ("k3s", "rke2"):
                    return words[1:]
    return [role]


def unit_env_files(unit, program):
    if program == "k3s":
        # systemd's EnvironmentFile order, then the openrc env file install.sh writes (/etc/rancher/k3s/<unit>.env)
        files = ["/etc/default/%s" % unit, "/etc/sysconfig/%s" % unit, "/etc/systemd/system/%s.service.env" % unit,
                 "/etc/rancher/k3s/%s.env" % unit]
    else:
        files = ["/etc/default/%s" % unit, "/etc/sysconfig/%s" % unit, "/usr/local/lib/systemd/system/%s.env" % unit]
    return [rooted(path) for path in files]


def parse_env_file(path):
    env = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            key = key.strip()
            if key.startswith("export "):
                key = key[7:].strip()
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            env[key] = value
    return env


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            state = handle.read().rsplit(b")", 1)[-1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def unit_pid(lab, unit, program):
    try:
        with open(os.path.join(lab, unit + ".pid"), encoding="utf-8") as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        return None
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read()
    except OSError:
        return None
    # Installed: /usr/local/bin/<program>; local tests: python3 .../k3s_double.py (program from the environment).
    return pid if pid_alive(pid) and (program.encode() in cmdline or b"k3s_double" in cmdline) else None


def log_tail(path, lines=15):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def service_action(unit, action):
    program, role = UNITS[unit]
    lab = rooted("/var/lib/rancher/%s/lab" % program)
    os.makedirs(lab, exist_ok=True)
    log_path = os.path.join(lab, unit + ".log")
    pid = unit_pid(lab, unit, program)
    if action == "status":
        if pid:
            print("%s is running (pid %d)" % (unit, pid))
            return 0
        print("%s is not running" % unit)
        return 3
    if action in ("stop", "restart"):
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
        for suffix in (".pid", ".ready"):
            if os.path.exists(os.path.join(lab, unit + suffix)):
                os.unlink(os.path.join(lab, unit + suffix))
        print("%s stopped" % unit)
        if action == "stop":
            return 0
        pid = None
    if action not in ("start", "restart"):
        sys.stderr.write("Usage: /etc/init.d/%s {start|stop|restart|status}\n" % unit)
        return 2
    if pid:
        print("%s is already running (pid %d)" % (unit, pid))
        return 0
    if program == "rke2":
        other = "rke2-agent" if unit == "rke2-server" else "rke2-server"
        if unit_pid(lab, other, program):
            sys.stderr.write("%s: refusing to start while %s is active\n" % (unit, other))
            return 1
    env = dict(os.environ)
    for path in unit_env_files(unit, program):
        if os.path.exists(path):
            env.update(parse_env_file(path))
    binary = rooted("/usr/local/bin/%s" % program)
    if not os.path.exists(binary):
        binary = os.path.abspath(sys.argv[0])
    argv = [binary] + unit_exec_args(unit, program, role)
    if not os.access(binary, os.X_OK) or not binary.endswith("/" + program):
        argv = [sys.executable, os.path.abspath(__file__)] + argv[1:]
        env["KUBEPKI_DOUBLE_PROGRAM"] = program
    env["KUBEPKI_DOUBLE_UNIT"] = unit
    env["KUBEPKI_DOUBLE_READY_DIR"] = lab
    ready = os.path.join(lab, unit + ".ready")
    if os.path.exists(ready):
        os.unlink(ready)
    with open(log_path, "ab") as log_handle:
        log_handle.write(("--- %s start %s\n" % (unit, iso(utcnow()))).encode())
        log_handle.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_handle, stderr=subprocess.STDOUT, env=env,  # pylint: disable=consider-using-with
                                start_new_session=True, close_fds=True)
    atomic_write(os.path.join(lab, unit + ".pid"), str(proc.pid), 0o644)
    timeout = float(env.get("KUBEPKI_DOUBLE_START_TIMEOUT") or 150)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(ready):
            print("%s started (pid %d)" % (unit, proc.pid))
            return 0
        code = proc.poll()
        if code is not None:
            sys.stderr.write("%s failed to start (exit %d); last log lines of %s:\n%s" % (unit, code, log_path, log_tail(log_path)))
            os.unlink(os.path.join(lab, unit + ".pid"))
            return 1
        time.sleep(0.1)
    sys.stderr.write("%s did not become ready within %ss (still running, pid %d); see %s\n" % (unit, timeout, proc.pid, log_path))
    return 1


INIT_SCRIPT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          {unit}
# Required-Start:    $network $remote_fs
# Required-Stop:     $network $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: {program} {role} (kubepki lab double)
### END INIT INFO
# Generated by tests/lab/double/k3s_double.py install. Arguments come from the unit's ExecStart
# (/etc/systemd/system/{unit}.service when present) and its env files, as systemd would pass them.
exec {python} {binary} lab-service {unit} "$1"
"""


def install(root, python):
    """Copy the double to <root>/usr/local/bin/{k3s,rke2} and write the four init scripts."""
    with open(os.path.abspath(__file__), encoding="utf-8") as handle:
        source = handle.read()
    bindir = os.path.join(root, "usr/local/bin")
    initdir = os.path.join(root, "etc/init.d")
    os.makedirs(bindir, exist_ok=True)
    os.makedirs(initdir, exist_ok=True)
    for program in ("k3s", "rke2"):
        atomic_write(os.path.join(bindir, program), "#!%s\n" % python + source, 0o755)
    for unit, (program, role) in UNITS.items():
        atomic_write(os.path.join(initdir, unit), INIT_SCRIPT.format(unit=unit, program=program, role=role, python=python,
                                                                     binary=os.path.join(os.path.abspath(root), "usr/local/bin", program)), 0o755)
    # the systemctl stand-in and recorder (systemctl_double.py): no systemd in the lab hosts
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "systemctl_double.py"), encoding="utf-8") as handle:
        atomic_write(os.path.join(bindir, "systemctl"), "#!%s\n" % python + handle.read(), 0o755)
    return [os.path.join(bindir, p) for p in ("k3s", "rke2", "systemctl")] + [os.path.join(initdir, u) for u in UNITS]


def uninstall(root):
    for path in [os.path.join(root, "usr/local/bin", p) for p in ("k3s", "rke2", "systemctl")] + [os.path.join(root, "etc/init.d", u) for u in UNITS]:
        if os.path.exists(path):
            os.unlink(path)


# --------------------------------------------------------------------------------------------------
# main


def program_name(argv0):
    base = os.path.basename(argv0)
    if base in ("k3s", "rke2"):
        return base
    env = os.environ.get("KUBEPKI_DOUBLE_PROGRAM")
    return env if env in ("k3s", "rke2") else "k3s"


USAGE = """usage: {p} [--version] <command>
  server [flags]                       run a server (supervisor + real etcd child)
  agent [flags]                        run an agent
  certificate rotate-ca --path P [--force] [--server URL]
  certificate rotate [--service S ...]
  certificate check [-o text|table|json|yaml]
{kubectl}  lab-service UNIT start|stop|restart|status   (called by /etc/init.d/UNIT)
  install [--root R] [--python /usr/bin/python3] | uninstall [--root R]
"""


def usage(flavor):
    kubectl = ("  kubectl get --raw PATH | get nodes [-o json] | create token NAME [-n NS] [--duration D] | create -f FILE [-o json]\n"
               if not flavor.rke2 else
               "  (no kubectl command: server/agent stage <data-dir>/data/<release>/bin/kubectl, linked as <data-dir>/bin)\n")
    return USAGE.format(p=flavor.program, kubectl=kubectl)


# Upstream rke2 commands (cmd/rke2/main.go) and the double's own lab commands.
RKE2_COMMANDS = ("server", "agent", "etcd-snapshot", "certificate", "secrets-encrypt", "token", "completion", "help", "h")
LAB_COMMANDS = ("lab-service", "lab-hash-ca", "lab-kubectl", "install", "uninstall")


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    flavor = Flavor(program_name(argv[0]))
    args = argv[1:]
    if flavor.rke2 and args and not args[0].startswith("-"):
        # urfave/cli runs its help command for an unknown command: ShowCommandHelp -> Exit("No help topic ...", 3).
        topic = args[1] if args[0] in ("help", "h") and len(args) > 1 else (args[0] if args[0] not in RKE2_COMMANDS + LAB_COMMANDS else None)
        if topic is not None and topic not in RKE2_COMMANDS:
            sys.stderr.write("No help topic for '%s'\n" % topic)
            return 3
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage(flavor))
        return 0 if args else 1
    try:
        if args[0] in ("--version", "-v", "version"):
            version = flavor.version()
            print("%s version %s (%s)" % (flavor.program, version, hashlib.sha1(version.encode()).hexdigest()[:8]))
            print("go version go1.22.12" + (" X:boringcrypto" if flavor.rke2 else ""))
            return 0
        if args[0] == "server":
            cfg = resolve_config(flavor, args[1:])[0]
            server = Server(flavor, cfg)

            def on_term(signum, frame):
                del signum, frame
                server.stopping.set()
                if not server.ready:
                    raise Fatal("terminated during start-up")
            signal.signal(signal.SIGTERM, on_term)
            try:
                server.run()
            finally:
                server.shutdown()
            return 0
        if args[0] == "agent":
            cfg = resolve_config(flavor, args[1:])[0]
            Agent(flavor, cfg).run()
            return 0
        if args[0] == "certificate" and len(args) > 1:
            sub = {"rotate-ca": cmd_rotate_ca, "rotate": cmd_rotate, "check": cmd_check}.get(args[1])
            if sub is None:
                sys.stderr.write("unknown certificate subcommand %s\n" % args[1])
                return 1
            return sub(flavor, args[2:])
        if args[0] == "kubectl" and not flavor.rke2:
            return cmd_kubectl(flavor, args[1:])
        if args[0] == "lab-kubectl":
            # The kubectl staged under <data-dir>/data/<release>/bin by `rke2 server|agent`.
            return cmd_kubectl(flavor, args[1:], standalone=True)
        if args[0] == "lab-service" and len(args) >= 3 and args[1] in UNITS:
            return service_action(args[1], args[2])
        if args[0] == "lab-hash-ca" and len(args) == 2:
            # The double's hashCA of a file (for tests): what a server would put into its token.
            print(hash_ca_or_empty(read_bytes(args[1])))
            return 0
        if args[0] == "install":
            flags = parse_flags(args[1:])[0]
            for path in install(flags.get("root", "/"), flags.get("python", "/usr/bin/python3")):
                print(path)
            return 0
        if args[0] == "uninstall":
            uninstall(parse_flags(args[1:])[0].get("root", "/"))
            return 0
    except Fatal:
        return 1
    sys.stderr.write(usage(flavor))
    return 1


if __name__ == "__main__":
    sys.exit(main())
