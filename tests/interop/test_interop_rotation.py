# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Real verifiers judge the rotation sets ``kubepki.certs.ca_rotation`` stages (and ``ca_verify``'s verdicts).

The "live" tls dirs are built with the openssl CLI only, never with the collection's code:

- ``default``: a default k3s cluster (k3s-rke2-pki.md section 2.1): five self-signed EC P-256 CAs, serial 0,
  CA:TRUE critical, KU digitalSignature+keyEncipherment+keyCertSign critical, SKI and NO AKI, single-cert
  ``<ca>.crt``, SEC1 keys, ``service.key`` RSA 2048 PKCS#1;
- ``custom``: RSA root -> RSA intermediate -> EC cluster CAs (contrib ``v3_ca`` profile, AKI == SKI on the
  root), bundles CA + intermediate + root, one key per file in PKCS#8 for some and PKCS#1/SEC1 for others
  (the layout upstream's rotate-default-ca-certs.sh breaks on);
- ``rotated``: a copy of ``default`` with the staged cross-signed set copied over it ("loaded"), rotated again;
- ``script_loaded``: ``default`` rotated by upstream's rotate-default-ca-certs.sh algorithm re-done with openssl
  (PKCS#8 keys, AKI == SKI roots) and loaded, rotated again;
- ``custom_pathlen``: ``custom`` with pathlen:1 on the intermediate.

Staged sets made with openssl (upstream's algorithm; without the cross-signed roots; with a wrong first key; on
``custom_pathlen``) check that ``ca_verify`` and Go agree on sets the module did not make.

Judges: Go crypto/x509 (``go/``: ``verify`` is the chain builder k3s, etcd and the kubelet use; ``hashca``
is k3s's token CA hash), ``openssl verify -x509_strict``, k3s's rotate-ca ``validateCA`` rule (section 5.3)
rebuilt from openssl-extracted AKI/SKI and run through Go, and a live 2-member etcd cluster with one member on
the current CAs and the other on the staged ones.

OpenSSL and the cross-signed bundle (documented in ``test_openssl_paths``): given the old root as the only
trust anchor and the WHOLE staged bundle as untrusted certs, OpenSSL 3.0 picks the first untrusted issuer
candidate of the new CA, the new SELF-SIGNED root (it comes before its cross-signed twin), and stops there:
error 19 "self-signed certificate in certificate chain". Its alternative-chain search only swaps untrusted
certs for TRUSTED ones, so it never tries the cross-signed twin. Go builds every candidate path and succeeds on
the very same input, as etcd does live. With only the cross-signed cert as untrusted, openssl succeeds. This is
an OpenSSL chain-building limitation, not a defect of the staged set; but OpenSSL-based clients that trust only
the current CA (curl, Python ssl) fail against a server on a new leaf mid-rotation (shown live with curl against
etcd). The bundle order (self-signed root before its cross-signed twin) is upstream's and the module's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import stat
import time

import pytest

from interop_lib import find_tool, pem_certs, port_open, run, run_playbook, wait_until, write_text

# CA (relative to the tls dir, without suffix) -> the usage a relying party checks for its leaves
CAS = {"server-ca": "server", "client-ca": "client", "request-header-ca": "client", "etcd/server-ca": "server",
       "etcd/peer-ca": "server"}
# CA -> k3s CN prefix (section 2.1)
K3S_CN = {"server-ca": "k3s-server", "client-ca": "k3s-client", "request-header-ca": "k3s-request-header",
          "etcd/server-ca": "etcd-server", "etcd/peer-ca": "etcd-peer"}
# CA -> key format of the custom chain's cluster CA key
CUSTOM_KEY_FORMAT = {"server-ca": "sec1", "client-ca": "pkcs8", "request-header-ca": "sec1",
                     "etcd/server-ca": "pkcs8", "etcd/peer-ca": "sec1"}
# ca_verify / engine names of the CAs
CA_VERIFY_NAME = {"server-ca": "server-ca", "client-ca": "client-ca", "request-header-ca": "request-header-ca",
                  "etcd/server-ca": "etcd-server-ca", "etcd/peer-ca": "etcd-peer-ca"}

DEFAULT_CA_CONFIG = ("[req]\ndistinguished_name=dn\n[dn]\n[k3s_ca]\nbasicConstraints=critical,CA:TRUE\n"
                     "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign\nsubjectKeyIdentifier=hash\n"
                     "authorityKeyIdentifier=none\n")
V3_CA = ("subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\nbasicConstraints=critical,CA:true\n"
         "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign\n")

# staged set -> (live dir key, mode)
NON_DISRUPTIVE = {"cross_default": ("default", "cross_sign"), "cross_custom": ("custom", "cross_sign"),
                  "cross_rotated": ("rotated", "cross_sign"), "cross_script": ("script_loaded", "cross_sign"),
                  "renew_custom": ("custom", "renew"), "cross_twin_first": ("default", "cross_sign")}
# module options beyond the mode, per set (also used by the reruns)
EXTRA_OPTIONS = {"cross_twin_first": {"bundle_order": "cross_signed_first"}}
ALL_SETS = dict(NON_DISRUPTIVE, new_root=("default", "new_root"))
# expected staged bundle lengths: new CA + new root + cross-signed root + current chain; renew: CA + inter + root
BUNDLE_LENGTH = {"cross_default": 4, "cross_custom": 6, "cross_rotated": 7, "cross_script": 7, "renew_custom": 3,
                 "cross_twin_first": 4}


def roots_of(name: str, staged: list) -> tuple:
    """(new self-signed root, cross-signed twin) of a cross_sign bundle, in the order the set asked for."""
    if EXTRA_OPTIONS.get(name, {}).get("bundle_order") == "cross_signed_first":
        return staged[2], staged[1]
    return staged[1], staged[2]


# staged sets built with the openssl CLI (upstream rotate-default-ca-certs.sh's algorithm), judged by ca_verify
# and Go alike: the script's set, the same without the cross-signed roots, the script's set with a wrong key
HAND_MADE = ("openssl_cross", "openssl_no_cross", "openssl_wrong_key")

PEM_KEY_RE = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----\r?\n.*?-----END \1PRIVATE KEY-----\r?\n?", re.S)
ETCD_FORM_TIMEOUT = 30
NEGATIVE_WINDOW = 15


# ---------------------------------------------------------------------------------------------------
# file helpers (text only; parsing is left to openssl and Go)
def tree_digest(path: str) -> dict:
    """relative path -> sha256 of every file under ``path`` (symlinks by target), plus directories' modes."""
    digest = {}
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                digest[os.path.relpath(full, path)] = hashlib.sha256(handle.read()).hexdigest()
        digest[os.path.relpath(root, path) + "/"] = oct(stat.S_IMODE(os.stat(root).st_mode))
    return digest


def read_text(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


def first_key(path: str, out: str) -> str:
    """The first private key block of a key file (k3s uses only the first key)."""
    match = PEM_KEY_RE.search(read_text(path))
    assert match, "no private key in %s" % path
    return write_text(out, match.group(0).rstrip("\r\n") + "\n", 0o600)


def split_bundle(bundle: str, out_dir: str, stem: str) -> list:
    """Every certificate of ``bundle`` in its own file, in order."""
    paths = []
    for index, block in enumerate(pem_certs(bundle)):
        paths.append(write_text(os.path.join(out_dir, "%s.%d.pem" % (stem, index)), block))
    return paths


def concat(out: str, *parts) -> str:
    """Concatenate files (paths) and PEM strings into ``out``."""
    text = ""
    for part in parts:
        text += read_text(part) if os.path.exists(part) else part
    return write_text(out, text)


_CERT_INFO = {}
_PUBKEY_RE = re.compile(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----\n", re.S)


def cert_info(openssl, cert: str) -> dict:
    """subject, issuer (RFC 2253), not_after (epoch), pubkey (PEM), ski/aki (hex or None), ext (text) of the
    first certificate of ``cert``, from ONE openssl call (cached by content: the same certs recur)."""
    text = read_text(cert)
    if text not in _CERT_INFO:
        out = openssl("x509", "-noout", "-subject", "-issuer", "-enddate", "-nameopt", "RFC2253", "-pubkey", "-ext",
                      "basicConstraints,keyUsage,extendedKeyUsage,subjectKeyIdentifier,authorityKeyIdentifier",
                      "-in", cert).stdout
        info = {"pubkey": _PUBKEY_RE.search(out).group(0), "ski": None, "aki": None}
        lines = out.splitlines()
        for index, line in enumerate(lines):
            for prefix, field in (("subject=", "subject"), ("issuer=", "issuer"), ("notAfter=", "not_after")):
                if line.startswith(prefix):
                    info[field] = line[len(prefix):]
            for label, field in (("Subject Key Identifier", "ski"), ("Authority Key Identifier", "aki")):
                if label in line and index + 1 < len(lines):
                    info[field] = lines[index + 1].strip().replace("keyid:", "").upper()
        info["not_after"] = int(time.mktime(time.strptime(info["not_after"].replace(" GMT", ""), "%b %d %H:%M:%S %Y")))
        info["ext"] = out.split("-----END PUBLIC KEY-----", 1)[1]
        _CERT_INFO[text] = info
    return _CERT_INFO[text]


def key_pubkey(openssl, key: str) -> str:
    return openssl("pkey", "-pubout", "-in", key).stdout


# ---------------------------------------------------------------------------------------------------
# the live tls dirs, openssl CLI only
def build_default_k3s(openssl, tls: str) -> None:
    """A default k3s server/tls (section 2.1)."""
    os.makedirs(os.path.join(tls, "etcd"))
    config = write_text(os.path.join(os.path.dirname(os.path.dirname(tls)), "k3s-ca.cnf"), DEFAULT_CA_CONFIG)
    stamp = int(time.time())
    for ca in CAS:
        key = os.path.join(tls, ca + ".key")
        openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", key)  # SEC1
        os.chmod(key, 0o600)
        openssl("req", "-x509", "-new", "-key", key, "-subj", "/CN=%s-ca@%d" % (K3S_CN[ca], stamp), "-days", 3650,
                "-sha256", "-set_serial", "0", "-config", config, "-extensions", "k3s_ca", "-out", os.path.join(tls, ca + ".crt"))
    service = os.path.join(tls, "service.key")
    openssl("genrsa", "-traditional", "-out", service, 2048)  # PKCS#1
    os.chmod(service, 0o600)


def _ec_key(openssl, path: str, key_format: str) -> str:
    if key_format != "sec1":
        return openssl.genkey(path, "ec")  # PKCS#8
    openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", path)
    os.chmod(path, 0o600)
    return path


def build_custom_chain(openssl, tls: str, work: str, inter_pathlen=None) -> None:
    """RSA root (PKCS#8) -> RSA intermediate (PKCS#1) -> EC cluster CAs (SEC1 / PKCS#8), one key per file."""
    os.makedirs(os.path.join(tls, "etcd"))
    os.makedirs(work)
    root, root_key = openssl.self_signed_ca(work, "root", cn="custom-root-ca", key_type="rsa", days=7300)
    inter_key = openssl.genkey(os.path.join(work, "inter.pkcs8.key"), "rsa")
    inter_ext = V3_CA if inter_pathlen is None else V3_CA.replace("CA:true", "CA:true,pathlen:%d" % inter_pathlen)
    inter, _inter_key = openssl.sign(work, "inter", inter_key, cn="custom-intermediate-ca", issuer_cert=root,
                                     issuer_key=root_key, days=5000, extensions=inter_ext)
    shutil.copyfile(root, os.path.join(tls, "root-ca.pem"))
    shutil.copyfile(inter, os.path.join(tls, "intermediate-ca.pem"))
    openssl("rsa", "-traditional", "-in", inter_key, "-out", os.path.join(tls, "intermediate-ca.key"))  # PKCS#1
    os.chmod(os.path.join(tls, "intermediate-ca.key"), 0o600)
    for ca in CAS:
        stem = ca.replace("/", "-")
        key = _ec_key(openssl, os.path.join(tls, ca + ".key"), CUSTOM_KEY_FORMAT[ca])
        cert, _key = openssl.sign(work, stem, key, cn="custom-%s" % stem, issuer_cert=inter, issuer_key=inter_key,
                                  days=3000, extensions=V3_CA)
        concat(os.path.join(tls, ca + ".crt"), cert, inter, root)
    service = openssl.genkey(os.path.join(tls, "service.key"), "rsa")  # PKCS#8
    os.chmod(service, 0o600)


def script_rotate(openssl, work: str, live: str, ca: str, stamp: int) -> tuple:
    """One CA of rotate-default-ca-certs.sh: (new CA, self-signed new root, cross-signed root, CA key, root key)."""
    stem = ca.replace("/", "-")
    current_cert, current_key = os.path.join(live, ca + ".crt"), os.path.join(live, ca + ".key")
    root_cn = "k3s-%s-root@%d" % (stem, stamp)
    root, root_key = openssl.self_signed_ca(work, stem + "-root-ssigned", cn=root_cn, days=7300)
    cross, _root_key = openssl.sub_ca(work, stem + "-root-xsigned", cn=root_cn, issuer_cert=current_cert,
                                      issuer_key=current_key, key=root_key, days=2900)
    new_ca, new_key = openssl.sub_ca(work, stem + "-ca", cn="k3s-%s-ca@%d" % (stem, stamp), issuer_cert=root,
                                     issuer_key=root_key, days=2900)
    return new_ca, root, cross, new_key, root_key


def build_script_sets(openssl, lab_base: str, live: str) -> None:
    """rotate-default-ca-certs.sh (section 4) with the openssl CLI for every CA of ``live``: ``openssl_cross``;
    the same without the cross-signed roots: ``openssl_no_cross``; ``openssl_cross`` whose server-ca.key is the
    client-ca key: ``openssl_wrong_key``."""
    stage = {name: os.path.join(lab_base, "stage", name, "tls") for name in HAND_MADE}
    for path in stage.values():
        os.makedirs(os.path.join(path, "etcd"))
    work = os.path.join(lab_base, "script-work")
    os.makedirs(work)
    stamp = int(time.time())
    for ca in CAS:
        new_ca, root, cross, new_key, root_key = script_rotate(openssl, work, live, ca, stamp)
        current_cert = os.path.join(live, ca + ".crt")
        concat(os.path.join(stage["openssl_cross"], ca + ".crt"), new_ca, root, cross, current_cert)
        concat(os.path.join(stage["openssl_no_cross"], ca + ".crt"), new_ca, root, current_cert)
        for name in HAND_MADE:
            if name == "openssl_wrong_key":
                shutil.copyfile(os.path.join(stage["openssl_cross"], ca + ".crt"), os.path.join(stage[name], ca + ".crt"))
            concat(os.path.join(stage[name], ca + ".key"), new_key, root_key)
    client_key = os.path.join(stage["openssl_cross"], "client-ca.key")
    shutil.copyfile(client_key, os.path.join(stage["openssl_wrong_key"], "server-ca.key"))
    new_service = os.path.join(work, "service.new.key")
    openssl("genrsa", "-traditional", "-out", new_service, 2048)
    for path in stage.values():
        concat(os.path.join(path, "service.key"), new_service, os.path.join(live, "service.key"))
        for root, _dirs, files in os.walk(path):
            for file_name in files:
                if file_name.endswith(".key"):
                    os.chmod(os.path.join(root, file_name), 0o600)


# ---------------------------------------------------------------------------------------------------
# the module runs
class Lab:
    def __init__(self, base: str) -> None:
        self.base = base
        self.live = {name: os.path.join(base, name, "server", "tls")
                     for name in ("default", "custom", "rotated", "script_loaded", "custom_pathlen")}
        self.nested_live = os.path.join(base, "nested", "tls", "k3s", "server", "tls")
        self.results = {}
        self.digests = {}

    def stage(self, name: str) -> str:
        return os.path.join(self.base, "stage", name)

    def stage_tls(self, name: str) -> str:
        return os.path.join(self.stage(name), "tls")

    def live_of(self, name: str) -> str:
        return self.live["default" if name in HAND_MADE else ALL_SETS[name][0]]

    def result(self, name: str) -> dict:
        assert name in self.results, sorted(self.results)
        return self.results[name]

    def ok(self, name: str) -> dict:
        result = self.result(name)
        assert not result.get("failed"), "%s failed: %s" % (name, json.dumps(result, indent=1)[:6000])
        return result

    def live_digests(self) -> dict:
        paths = dict(self.live, nested=os.path.join(self.base, "nested"))
        return {name: tree_digest(path) for name, path in paths.items() if os.path.isdir(path)}


def _rotation(lab: Lab, name: str, **extra) -> dict:
    live_key, mode = ALL_SETS[name]
    options = {"current_path": lab.live[live_key], "staging_path": lab.stage(name), "distribution": "k3s",
               "mode": mode}
    options.update(EXTRA_OPTIONS.get(name, {}))
    options.update(extra)
    return options


def _verify(lab: Lab, name: str, **extra) -> dict:
    options = {"current_path": lab.live_of(name), "staging_path": lab.stage(name), "distribution": "k3s"}
    options.update(extra)
    return options


@pytest.fixture(scope="module")
def lab(tmp_path_factory, openssl):
    """Every module run in ONE playbook (ansible-playbook startup is the expensive part)."""
    base = str(tmp_path_factory.mktemp("rotation"))
    the_lab = Lab(base)
    build_default_k3s(openssl, the_lab.live["default"])
    build_custom_chain(openssl, the_lab.live["custom"], os.path.join(base, "custom-work"))
    shutil.copytree(the_lab.live["default"], the_lab.nested_live)
    # the "rotated" cluster starts as a copy of the default one; the playbook loads the staged set over it
    shutil.copytree(the_lab.live["default"], the_lab.live["rotated"])
    # a stale staging dir (another cluster's files) that a check-mode run must leave alone
    shutil.copytree(the_lab.live["custom"], the_lab.stage_tls("check_stale"))
    build_script_sets(openssl, base, the_lab.live["default"])
    # a custom chain whose intermediate has pathlen:1 (valid as is: one CA below it), and the upstream script's
    # server-ca set on it, made with openssl: the cross-signed path puts THREE CAs below that intermediate
    pathlen_live = the_lab.live["custom_pathlen"]
    build_custom_chain(openssl, pathlen_live, os.path.join(base, "custom-pathlen-work"), inter_pathlen=1)
    new_ca, root, cross, new_key, root_key = script_rotate(openssl, os.path.join(base, "custom-pathlen-work"),
                                                           pathlen_live, "server-ca", int(time.time()))
    os.makedirs(the_lab.stage_tls("openssl_pathlen"))
    concat(os.path.join(the_lab.stage_tls("openssl_pathlen"), "server-ca.crt"), new_ca, root, cross,
           os.path.join(pathlen_live, "server-ca.crt"))
    write_text(os.path.join(the_lab.stage_tls("openssl_pathlen"), "server-ca.key"),
               read_text(new_key) + read_text(root_key), 0o600)
    # a cluster rotated once by upstream's script (PKCS#8 keys, AKI == SKI roots), loaded: rotate it again
    shutil.copytree(the_lab.live["default"], the_lab.live["script_loaded"])
    shutil.copytree(the_lab.stage_tls("openssl_cross"), the_lab.live["script_loaded"], dirs_exist_ok=True)
    the_lab.digests["start"] = the_lab.live_digests()
    the_lab.digests["check_stale"] = tree_digest(the_lab.stage("check_stale"))

    def rotation(task, name, **extra):
        return {"name": task, "kubepki.certs.ca_rotation": _rotation(the_lab, name, **extra)}

    default_live = the_lab.live["default"]
    tasks = [
        rotation("cross_default", "cross_default"),
        dict(rotation("check rerun", "cross_default"), check_mode=True),
        dict(rotation("check fresh", "cross_default", staging_path=os.path.join(base, "stage", "check_fresh")),
             check_mode=True),
        dict(rotation("check stale", "cross_default", staging_path=the_lab.stage("check_stale")), check_mode=True),
        rotation("cross_custom", "cross_custom"),
        rotation("cross_twin_first", "cross_twin_first"),
        rotation("renew_custom", "renew_custom"),
        rotation("new_root", "new_root"),
        rotation("refuse tls is live", "cross_default", staging_path=os.path.dirname(default_live)),
        rotation("refuse inside live", "cross_default", staging_path=os.path.join(default_live, "stage")),
        rotation("refuse contains live", "cross_default", current_path=the_lab.nested_live,
                 staging_path=os.path.join(base, "nested")),
        # "loaded": rotate-ca + restart put the staged set in place of the live files; then rotate again
        {"name": "load cross_default", "ansible.builtin.copy": {
            "src": the_lab.stage_tls("cross_default") + "/", "dest": the_lab.live["rotated"] + "/",
            "remote_src": True}},
        rotation("already loaded", "cross_rotated", staging_path=the_lab.stage("cross_default")),
        rotation("cross_rotated", "cross_rotated"),
        rotation("cross_script", "cross_script"),
        rotation("cross_pathlen", "cross_custom", current_path=pathlen_live,
                 staging_path=os.path.join(base, "stage", "cross_pathlen")),
        {"name": "verify openssl_pathlen", "kubepki.certs.ca_verify": {
            "current_path": pathlen_live, "staging_path": the_lab.stage("openssl_pathlen"), "distribution": "k3s"}},
        # an operator staged cross_sign, then switches to renew with the same staging path
        rotation("renew_over_cross prep", "cross_custom", staging_path=the_lab.stage("renew_over_cross")),
        rotation("renew_over_cross", "renew_custom", staging_path=the_lab.stage("renew_over_cross")),
    ]
    # second runs: compare, then act -> nothing changes
    tasks.extend(rotation(name + " again", name) for name in ALL_SETS)
    for name in tuple(ALL_SETS) + HAND_MADE:
        tasks.append({"name": "verify " + name, "kubepki.certs.ca_verify": _verify(the_lab, name)})
    tasks.append({"name": "verify new_root allow_disruptive",
                  "kubepki.certs.ca_verify": _verify(the_lab, "new_root", allow_disruptive=True)})
    os.makedirs(os.path.join(base, "playbook"))
    the_lab.results.update(run_playbook(tasks, os.path.join(base, "playbook")))
    the_lab.digests["end"] = the_lab.live_digests()
    return the_lab


# ---------------------------------------------------------------------------------------------------
# leaves (openssl CLI) and the Go judge
class Leaves:
    """Leaves issued with openssl by the current (live) or the new (staged) CA of one set."""

    def __init__(self, lab: Lab, name: str, ca: str, openssl, work: str) -> None:
        self.lab, self.name, self.ca, self.openssl, self.work = lab, name, ca, openssl, work
        self.stem = ca.replace("/", "-")
        self.usage = CAS[ca]
        self.live_bundle = os.path.join(lab.live_of(name), ca + ".crt")
        self.staged_bundle = os.path.join(lab.stage_tls(name), ca + ".crt")
        self.live_certs = split_bundle(self.live_bundle, work, self.stem + "-live")
        self.staged_certs = split_bundle(self.staged_bundle, work, self.stem + "-staged")
        self.live_key = first_key(os.path.join(lab.live_of(name), ca + ".key"), os.path.join(work, self.stem + "-live.key"))
        self.staged_key = first_key(os.path.join(lab.stage_tls(name), ca + ".key"),
                                    os.path.join(work, self.stem + "-staged.key"))

    def issue(self, which: str, *, usage=None, cn=None):
        """(leaf cert, key, presented chain = leaf + its bundle) of the ``current`` or ``new`` CA."""
        usage = usage or self.usage
        issuer, key, bundle = ((self.staged_certs[0], self.staged_key, self.staged_bundle) if which == "new"
                               else (self.live_certs[0], self.live_key, self.live_bundle))
        name = "%s-%s-%s-%s" % (self.stem, which, usage, secrets.token_hex(2))
        cert, leaf_key = self.openssl.leaf(self.work, name, issuer_cert=issuer, issuer_key=key, cn=cn or name,
                                           server=usage in ("server", "both"), client=usage in ("client", "both"),
                                           dns=("localhost",), ips=("127.0.0.1",))
        chain = concat(os.path.join(self.work, name + ".presented.pem"), cert, bundle)
        return cert, leaf_key, chain


def go_ok(result) -> bool:
    return result.returncode == 0


def go_detail(result) -> str:
    return "rc=%d\nstdout: %s\nstderr: %s" % (result.returncode, result.stdout, result.stderr)


# ---------------------------------------------------------------------------------------------------
# module reports
@pytest.mark.parametrize("name", list(ALL_SETS))
def test_module_report(lab, name):
    result = lab.ok(name)
    mode = ALL_SETS[name][1]
    assert result["changed"] is True and result["mode"] == mode and result["already_loaded"] is False
    assert result["disruptive"] is (mode == "new_root") and result["requires_force"] is (mode == "new_root")
    assert result["token_changes"] is (mode != "renew"), result
    assert len(result["cas"]) == 5
    for entry in result["cas"]:
        assert entry["action"] == mode, entry
        assert entry["current_fingerprint_sha256"] != entry["new_fingerprint_sha256"], entry
        if name in BUNDLE_LENGTH:
            assert entry["bundle_length"] == BUNDLE_LENGTH[name], entry
    for ca in CAS:
        assert len(pem_certs(os.path.join(lab.stage_tls(name), ca + ".crt"))) == BUNDLE_LENGTH.get(name, 3)


# ---------------------------------------------------------------------------------------------------
# the staged files themselves, read with openssl
def private_keys(path: str, out_dir: str, stem: str) -> list:
    paths = []
    for index, match in enumerate(PEM_KEY_RE.finditer(read_text(path))):
        paths.append(write_text(os.path.join(out_dir, "%s.%d.key" % (stem, index)), match.group(0), 0o600))
    return paths


@pytest.mark.parametrize("name", list(NON_DISRUPTIVE))
def test_staged_layout(lab, name, openssl, tmp_path):
    """Bundle order and keys as section 4 describes (cross_sign) or CA + kept chain (renew), CA profile kept."""
    lab.ok(name)
    work = str(tmp_path)
    for ca in CAS:
        stem = ca.replace("/", "-")
        live = split_bundle(os.path.join(lab.live_of(name), ca + ".crt"), work, stem + "-live")
        staged = split_bundle(os.path.join(lab.stage_tls(name), ca + ".crt"), work, stem + "-staged")
        keys = private_keys(os.path.join(lab.stage_tls(name), ca + ".key"), work, stem)
        assert key_pubkey(openssl, keys[0]) == cert_info(openssl, staged[0])["pubkey"], "%s: first key" % ca
        for cert in staged[:1 if ALL_SETS[name][1] == "renew" else 3]:
            text = cert_info(openssl, cert)["ext"]
            assert re.search(r"Basic Constraints: critical\s+CA:TRUE", text), (ca, text)
            assert "Certificate Sign" in text and "Extended Key Usage" not in text, (ca, text)
        if ALL_SETS[name][1] == "renew":
            assert [read_text(c) for c in staged[1:]] == [read_text(c) for c in live[1:]], "%s: chain kept" % ca
            assert len(keys) == 1
            continue
        new_ca, (root, cross) = staged[0], roots_of(name, staged)
        # the current chain follows, unchanged
        assert [read_text(c) for c in staged[3:]] == [read_text(c) for c in live], "%s: current chain kept" % ca
        # key file: new CA key, then the new root key
        assert len(keys) == 2 and key_pubkey(openssl, keys[1]) == cert_info(openssl, root)["pubkey"], ca
        # self-signed root and cross-signed twin: same subject, same key; the twin issued by the current CA
        root_info, cross_info, current_info = (cert_info(openssl, c) for c in (root, cross, live[0]))
        root_subject, root_issuer = root_info["subject"], root_info["issuer"]
        cross_subject, cross_issuer = cross_info["subject"], cross_info["issuer"]
        assert root_subject == root_issuer == cross_subject, (root_subject, root_issuer, cross_subject)
        assert cross_issuer == current_info["subject"], (cross_issuer, ca)
        assert cross_info["pubkey"] == root_info["pubkey"]
        assert current_info["ski"] and cross_info["aki"] == current_info["ski"], "%s: cross-signed AKI != current SKI" % ca
        assert cert_info(openssl, new_ca)["issuer"] == root_subject
        # nothing outlives its issuer: the twin is clamped to the current CA, the new CA to its root
        assert cross_info["not_after"] <= current_info["not_after"], ca
        assert cert_info(openssl, new_ca)["not_after"] <= root_info["not_after"], ca


@pytest.mark.parametrize("name", list(ALL_SETS))
def test_service_key(lab, name, openssl, tmp_path):
    """k3s validateServiceKey: the current first key is kept; a new RSA 2048 key signs first."""
    lab.ok(name)
    work = str(tmp_path)
    live = private_keys(os.path.join(lab.live_of(name), "service.key"), work, "live")
    staged = private_keys(os.path.join(lab.stage_tls(name), "service.key"), work, "staged")
    staged_public = [key_pubkey(openssl, key) for key in staged]
    assert key_pubkey(openssl, live[0]) in staged_public[1:], "the current signing key was dropped"
    assert staged_public[0] not in [key_pubkey(openssl, key) for key in live], "no new signing key"
    assert "(2048 bit" in openssl("pkey", "-noout", "-text", "-in", staged[0]).stdout
    assert len(staged) == len(live) + 1


# ---------------------------------------------------------------------------------------------------
# token CA hash: Go hashca == module == openssl fingerprint of the chain's root
@pytest.mark.parametrize("name", list(ALL_SETS))
def test_token_ca_hash(lab, name, go_verifier, openssl, tmp_path):
    result = lab.ok(name)
    live_server = os.path.join(lab.live_of(name), "server-ca.crt")
    staged_server = os.path.join(lab.stage_tls(name), "server-ca.crt")
    before, after = go_verifier.hashca(live_server), go_verifier.hashca(staged_server)
    assert before == result["token_ca_hash_before"], (before, result["token_ca_hash_before"])
    assert after == result["token_ca_hash"], (after, result["token_ca_hash"])
    staged = split_bundle(staged_server, str(tmp_path), "server-ca")
    if name == "cross_default":
        # a default cluster: hashCA of a single cert = sha256 of the exact file bytes
        with open(live_server, "rb") as handle:
            assert before == hashlib.sha256(handle.read()).hexdigest()
    if ALL_SETS[name][1] == "cross_sign":
        new_root = roots_of(name, staged)[0]
        subject, issuer = cert_info(openssl, new_root)["subject"], cert_info(openssl, new_root)["issuer"]
        assert subject == issuer, "the new root's place holds no self-signed root: %s / %s" % (subject, issuer)
        assert after == openssl.fingerprint_hex(new_root)
        # upstream's script prints the new intermediate's fingerprint: that is NOT the k3s hash
        assert after != openssl.fingerprint_hex(staged[0])
        assert after != before
    elif name == "renew_custom":
        root = os.path.join(lab.live["custom"], "root-ca.pem")
        assert after == before == openssl.fingerprint_hex(root)
        assert result["nodes_needing_new_token"] == "none"
    else:
        assert after != before
        assert after == openssl.fingerprint_hex(staged[-1])


# ---------------------------------------------------------------------------------------------------
# continuity with Go's chain builder
@pytest.mark.parametrize("ca", list(CAS))
@pytest.mark.parametrize("name", list(NON_DISRUPTIVE))
def test_continuity_go(lab, name, ca, go_verifier, openssl, tmp_path):
    lab.ok(name)
    leaves = Leaves(lab, name, ca, openssl, str(tmp_path))
    usage = leaves.usage
    new_cert, _new_key, new_chain = leaves.issue("new")
    _current_cert, _current_key, current_chain = leaves.issue("current")
    # old client: roots = ONLY the live bundle; the new leaf arrives with the staged bundle
    old_client = go_verifier.verify(new_chain, roots=leaves.live_bundle, usage=usage)
    assert go_ok(old_client), "%s %s: a client trusting only the current CA refuses a new leaf\n%s" % (
        name, ca, go_detail(old_client))
    # the chain Go built for the old client: through the cross-signed root to the current CA (cross_sign),
    # through the kept intermediate (renew)
    via = leaves.live_certs[0] if ALL_SETS[name][1] == "cross_sign" else leaves.staged_certs[1]
    via_subject = cert_info(openssl, via)["subject"]
    assert via_subject in old_client.stdout, (via_subject, old_client.stdout)
    new_client = go_verifier.verify(current_chain, roots=leaves.staged_bundle, usage=usage)
    assert go_ok(new_client), "%s %s: a client holding the new bundle refuses a current leaf\n%s" % (
        name, ca, go_detail(new_client))
    new_new = go_verifier.verify(new_chain, roots=leaves.staged_bundle, usage=usage)
    assert go_ok(new_new), "%s %s: new/new\n%s" % (name, ca, go_detail(new_new))
    # the new CA alone (no cross-signed help in the presented chain) is NOT trusted by an old client for a
    # cross-signed set: proves the old-client success above really goes through the cross-signed root
    if ALL_SETS[name][1] == "cross_sign":
        new_root = roots_of(name, leaves.staged_certs)[0]
        bare = concat(os.path.join(str(tmp_path), "bare.pem"), new_cert, leaves.staged_certs[0], new_root)
        refused = go_verifier.verify(bare, roots=leaves.live_bundle, usage=usage)
        assert not go_ok(refused), "%s %s: old client trusted a new leaf without the cross-signed root" % (name, ca)


@pytest.mark.parametrize("ca", list(CAS))
def test_new_root_breaks_old_clients(lab, ca, go_verifier, openssl, tmp_path):
    lab.ok("new_root")
    leaves = Leaves(lab, "new_root", ca, openssl, str(tmp_path))
    _new_cert, _new_key, new_chain = leaves.issue("new")
    old_client = go_verifier.verify(new_chain, roots=leaves.live_bundle, usage=leaves.usage)
    assert not go_ok(old_client), "a new_root leaf verified for a client trusting only the current CA:\n%s" % (
        old_client.stdout)
    assert "unknown authority" in old_client.stderr, old_client.stderr
    new_new = go_verifier.verify(new_chain, roots=leaves.staged_bundle, usage=leaves.usage)
    assert go_ok(new_new), go_detail(new_new)


# ---------------------------------------------------------------------------------------------------
# k3s rotate-ca validateCA (section 5.3), pools rebuilt from openssl-extracted AKI/SKI, judged by Go
def _validate_ca(lab, name, ca, go_verifier, openssl, work):
    old = split_bundle(os.path.join(lab.live_of(name), ca + ".crt"), work, "old")
    new = split_bundle(os.path.join(lab.stage_tls(name), ca + ".crt"), work, "new")
    roots, intermediates = [], []
    for cert in old:
        ski, aki = cert_info(openssl, cert)["ski"], cert_info(openssl, cert)["aki"]
        (roots if aki is None or aki == ski else intermediates).append(cert)
    for cert in new[1:]:
        if cert_info(openssl, cert)["aki"] is not None:
            intermediates.append(cert)
    assert roots, "no root in the current %s bundle" % ca
    roots_file = concat(os.path.join(work, "roots.pem"), *roots)
    inter_file = concat(os.path.join(work, "intermediates.pem"), *intermediates) if intermediates else None
    # default options: no KeyUsages -> ServerAuth along the chain, which the Go tool's "server" usage asks
    return len(new), go_verifier.verify(new[0], roots=roots_file, intermediates=inter_file, usage="server")


@pytest.mark.parametrize("ca", list(CAS))
@pytest.mark.parametrize("name", list(ALL_SETS))
def test_k3s_validateca_rule(lab, name, ca, go_verifier, openssl, tmp_path):
    lab.ok(name)
    count, result = _validate_ca(lab, name, ca, go_verifier, openssl, str(tmp_path))
    assert count > 1, "k3s refuses a single-certificate CA bundle"
    if name == "new_root":
        assert not go_ok(result), "a fresh root passed k3s's validateCA: it would load without --force"
    else:
        assert go_ok(result), "%s %s fails k3s rotate-ca validateCA:\n%s" % (name, ca, go_detail(result))


# ---------------------------------------------------------------------------------------------------
# openssl verify -x509_strict
@pytest.mark.parametrize("name", list(NON_DISRUPTIVE))
def test_openssl_paths(lab, name, openssl, go_verifier, tmp_path):
    lab.ok(name)
    work = str(tmp_path)
    observed = {}
    for ca in CAS:
        ca_work = os.path.join(work, ca.replace("/", "-"))
        os.makedirs(ca_work)
        leaves = Leaves(lab, name, ca, openssl, ca_work)
        staged = leaves.staged_certs
        if ALL_SETS[name][1] == "renew":
            # same root: the new CA chains to the custom root through the kept intermediate
            strict = openssl.verify(staged[0], cafile=staged[-1], untrusted=staged[1])
            assert strict.returncode == 0, strict.stdout + strict.stderr
            continue
        root, cross = roots_of(name, staged)
        # new/new: the new CA under the new self-signed root
        strict = openssl.verify(staged[0], cafile=root)
        assert strict.returncode == 0, "%s %s new/new: %s%s" % (name, ca, strict.stdout, strict.stderr)
        # old root path with the whole staged tail (self-signed twin first) as untrusted
        tail = concat(os.path.join(leaves.work, "tail.pem"), *staged[1:])
        old_path = openssl.verify(staged[0], cafile=leaves.live_bundle, untrusted=tail)
        go_same = go_verifier.verify(staged[0], roots=leaves.live_bundle, intermediates=tail, usage="server")
        assert go_ok(go_same), "%s %s: Go refuses the old-root path\n%s" % (name, ca, go_detail(go_same))
        if EXTRA_OPTIONS.get(name, {}).get("bundle_order") == "cross_signed_first":
            # the point of that order: OpenSSL meets the twin first and reaches the current CA
            assert old_path.returncode == 0, "%s %s twin first: %s%s" % (name, ca, old_path.stdout, old_path.stderr)
        elif old_path.returncode != 0:
            assert "self-signed certificate in certificate chain" in old_path.stdout + old_path.stderr, (
                old_path.stdout + old_path.stderr)
        observed[ca] = old_path.returncode
        # only the cross-signed twin (and the current non-root chain certs) as untrusted: openssl succeeds
        only_cross = concat(os.path.join(leaves.work, "cross.pem"), cross)
        via_cross = openssl.verify(staged[0], cafile=leaves.live_bundle, untrusted=only_cross)
        assert via_cross.returncode == 0, "%s %s via cross-signed root: %s%s" % (
            name, ca, via_cross.stdout, via_cross.stderr)
        # the cross-signed cert itself verifies strictly under the current CA
        xs = openssl.verify(cross, cafile=leaves.live_bundle)
        assert xs.returncode == 0, xs.stdout + xs.stderr
    print("openssl old-root path with the self-signed twin untrusted (rc per CA): %s" % observed)


# ---------------------------------------------------------------------------------------------------
# ca_verify verdicts
@pytest.mark.parametrize("name", list(NON_DISRUPTIVE))
def test_ca_verify_accepts_non_disruptive(lab, name):
    lab.ok(name)
    result = lab.result("verify " + name)
    assert not result.get("failed"), result.get("msg")
    assert result["failed_checks"] == []
    names = {c["ca"] for c in result["checks"] if c["check"] == "new_leaf_trusted_by_current_clients" and c["ok"]}
    assert names == set(CA_VERIFY_NAME.values()), result["checks"]


def test_ca_verify_refuses_new_root(lab):
    lab.ok("new_root")
    result = lab.result("verify new_root")
    assert result.get("failed"), "ca_verify accepted a new root without allow_disruptive"
    failed = {(c["ca"], c["check"]) for c in result["failed_checks"]}
    for ca in CA_VERIFY_NAME.values():
        assert (ca, "new_leaf_trusted_by_current_clients") in failed, failed
        assert "%s new_leaf_trusted_by_current_clients" % ca in result["msg"], result["msg"]
    allowed = lab.result("verify new_root allow_disruptive")
    assert not allowed.get("failed"), allowed.get("msg")
    assert allowed["failed_checks"] == []
    still_shown = {c["ca"] for c in allowed["checks"] if c["check"] == "new_leaf_trusted_by_current_clients"
                   and not c["ok"]}
    assert still_shown == set(CA_VERIFY_NAME.values())


def test_ca_verify_on_script_sets(lab):
    """ca_verify judges sets it did not make: the upstream script's set passes; without the cross-signed roots
    every CA fails continuity and k3s's chain check; a first key that is not the first cert's fails key_matches_cert."""
    script = lab.result("verify openssl_cross")
    assert not script.get("failed") and script["failed_checks"] == [], script.get("msg")
    no_cross = lab.result("verify openssl_no_cross")
    assert no_cross.get("failed"), "ca_verify accepted a set that is not cross-signed"
    failed = {(c["ca"], c["check"]) for c in no_cross["failed_checks"]}
    for ca in CA_VERIFY_NAME.values():
        for check in ("chains_to_current_root", "new_leaf_trusted_by_current_clients"):
            assert (ca, check) in failed, (ca, check, failed)
    wrong = lab.result("verify openssl_wrong_key")
    assert wrong.get("failed")
    assert {(c["ca"], c["check"]) for c in wrong["failed_checks"]} == {("server-ca", "key_matches_cert")}, wrong["msg"]


@pytest.mark.parametrize("ca", list(CAS))
@pytest.mark.parametrize("name", ["openssl_cross", "openssl_no_cross"])
def test_go_agrees_on_script_sets(lab, name, ca, go_verifier, openssl, tmp_path):
    """Go's verdicts (validateCA rule, old client) on the openssl-built sets match ca_verify's."""
    expected = name == "openssl_cross"
    count, validate = _validate_ca(lab, name, ca, go_verifier, openssl, str(tmp_path))
    assert count > 1 and go_ok(validate) is expected, go_detail(validate)
    leaves = Leaves(lab, name, ca, openssl, str(tmp_path))
    _new_cert, _new_key, new_chain = leaves.issue("new")
    old_client = go_verifier.verify(new_chain, roots=leaves.live_bundle, usage=leaves.usage)
    assert go_ok(old_client) is expected, go_detail(old_client)
    check = next(c for c in lab.result("verify " + name)["checks"]
                 if c["ca"] == CA_VERIFY_NAME[ca] and c["check"] == "new_leaf_trusted_by_current_clients")
    assert check["ok"] is expected, check


def test_ca_verify_and_go_refuse_pathlen_broken_cross_sign(lab, go_verifier, openssl, tmp_path):
    """A cross-signed server-ca (upstream's algorithm, openssl) under an intermediate with pathlen:1: k3s's
    validateCA rule fails in Go ("too many intermediates for path length constraint") and ca_verify says so."""
    live = lab.live["custom_pathlen"]
    stage_tls = lab.stage_tls("openssl_pathlen")
    work = str(tmp_path)
    old = split_bundle(os.path.join(live, "server-ca.crt"), work, "old")
    new = split_bundle(os.path.join(stage_tls, "server-ca.crt"), work, "new")
    roots = [c for c in old if cert_info(openssl, c)["aki"] in (None, cert_info(openssl, c)["ski"])]
    intermediates = [c for c in old if c not in roots] + [c for c in new[1:] if cert_info(openssl, c)["aki"]]
    result = go_verifier.verify(new[0], roots=concat(os.path.join(work, "roots.pem"), *roots),
                                intermediates=concat(os.path.join(work, "inter.pem"), *intermediates), usage="server")
    assert not go_ok(result) and "path length" in result.stderr, go_detail(result)
    verdict = lab.result("verify openssl_pathlen")
    assert verdict.get("failed"), "ca_verify accepted a set k3s's validateCA rejects"
    assert ("server-ca", "chains_to_current_root") in {(c["ca"], c["check"]) for c in verdict["failed_checks"]}


# Regression (was a defect): pathlen of the CAs above the current CA is checked before staging.
def test_cross_sign_refuses_pathlen_constrained_ancestor(lab):
    result = lab.result("cross_pathlen")
    assert result.get("failed"), "ca_rotation staged a cross-signed set k3s's validateCA rejects: %s" % (
        [c["bundle_length"] for c in result.get("cas", [])])
    assert not os.path.exists(os.path.join(lab.base, "stage", "cross_pathlen"))


# Regression (was a defect): renew does not keep an earlier cross-signed staging set.
def test_renew_replaces_a_cross_signed_staging_set(lab, go_verifier):
    lab.ok("renew_over_cross prep")
    result = lab.ok("renew_over_cross")
    staged = os.path.join(lab.stage_tls("renew_over_cross"), "server-ca.crt")
    live = os.path.join(lab.live["custom"], "server-ca.crt")
    assert result["token_changes"] is False, result["cas"]
    assert go_verifier.hashca(staged) == go_verifier.hashca(live)
    assert len(pem_certs(staged)) == 3


# ---------------------------------------------------------------------------------------------------
# idempotence and safety at module level
def test_idempotence_check_mode_and_refusals(lab):
    assert lab.ok("check rerun")["changed"] is False
    # check mode writes nothing: a fresh staging path is not created, a stale one stays byte-identical
    fresh = lab.ok("check fresh")
    assert fresh["changed"] is True and not os.path.exists(os.path.join(lab.base, "stage", "check_fresh"))
    stale = lab.ok("check stale")
    assert stale["changed"] is True and {f["state"] for f in stale["files"]} == {"updated"}, stale["files"]
    assert tree_digest(lab.stage("check_stale")) == lab.digests["check_stale"]
    # the already-loaded set is recognised and nothing is staged
    loaded = lab.ok("already loaded")
    assert loaded["already_loaded"] is True and loaded["changed"] is False, loaded
    # refusals, with nothing written
    for name in ("refuse tls is live", "refuse inside live", "refuse contains live"):
        result = lab.result(name)
        assert result.get("failed") and "live tls directory" in result.get("msg", ""), (name, result)
    assert sorted(os.listdir(os.path.dirname(lab.live["default"]))) == ["tls"]
    assert not os.path.exists(os.path.join(lab.live["default"], "stage"))
    assert sorted(os.listdir(os.path.join(lab.base, "nested"))) == ["tls"]
    # the live dirs never change; the "rotated" one holds exactly the loaded set (cross_rotated wrote nothing there)
    start, end = lab.digests["start"], lab.digests["end"]
    for live in ("default", "custom", "nested", "script_loaded", "custom_pathlen"):
        assert end[live] == start[live], "live dir %s changed" % live
    loaded_files = {k: v for k, v in tree_digest(lab.stage_tls("cross_default")).items() if not k.endswith("/")}
    expected = dict(start["rotated"], **loaded_files)
    assert {k: v for k, v in end["rotated"].items() if not k.endswith("/")} == {
        k: v for k, v in expected.items() if not k.endswith("/")}


@pytest.mark.parametrize("name", list(ALL_SETS))
def test_second_run_changes_nothing(lab, name):
    first, again = lab.ok(name), lab.ok(name + " again")
    assert again["changed"] is False and again["token_ca_hash"] == first["token_ca_hash"], again
    assert all(f["state"] == "unchanged" for f in again["files"]), again["files"]
    assert [c["new_fingerprint_sha256"] for c in again["cas"]] == [c["new_fingerprint_sha256"] for c in first["cas"]]


@pytest.mark.parametrize("name", list(ALL_SETS))
def test_staging_modes(lab, name):
    lab.ok(name)
    stage = lab.stage(name)
    for directory in (stage, os.path.join(stage, "tls"), os.path.join(stage, "tls", "etcd")):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    keys = []
    for root, _dirs, files in os.walk(stage):
        for file_name in files:
            if file_name.endswith(".key"):
                keys.append(os.path.join(root, file_name))
                assert stat.S_IMODE(os.stat(keys[-1]).st_mode) == 0o600, keys[-1]
    assert len(keys) >= 6, keys
    # k3s reconciles by mtime (section 5.5): every staged file is newer than its live counterpart
    live = lab.live_of(name)
    for root, _dirs, files in os.walk(lab.stage_tls(name)):
        for file_name in files:
            staged = os.path.join(root, file_name)
            current = os.path.join(live, os.path.relpath(staged, lab.stage_tls(name)))
            if os.path.exists(current):
                assert os.stat(staged).st_mtime >= os.stat(current).st_mtime, staged


# ---------------------------------------------------------------------------------------------------
# LIVE etcd mid-rotation: member A on the current CAs, member B on the staged ones
class MidRotationEtcd:
    def __init__(self, lab, name, openssl, processes, free_port, work):
        self.processes = processes
        self.work = work
        self.etcd = find_tool("etcd")
        self.etcdctl_bin = find_tool("etcdctl")
        server = Leaves(lab, name, "etcd/server-ca", openssl, work)
        peer = Leaves(lab, name, "etcd/peer-ca", openssl, work)
        self.members = []
        for member, which in (("a", "current"), ("b", "new")):
            server_leaf = server.issue(which, usage="both", cn="etcd-server")
            peer_leaf = peer.issue(which, usage="both", cn="etcd-peer")
            self.members.append({
                "name": member, "which": which, "client_port": free_port(), "peer_port": free_port(),
                "server": (server_leaf[2], server_leaf[1]), "peer": (peer_leaf[2], peer_leaf[1]),
                "trusted": server.live_bundle if which == "current" else server.staged_bundle,
                "peer_trusted": peer.live_bundle if which == "current" else peer.staged_bundle})
        self.clients = {}
        for which in ("current", "new"):
            leaf = server.issue(which, usage="client", cn="etcd-client")
            self.clients[which] = {"cert": leaf[2], "key": leaf[1],
                                   "cacert": server.live_bundle if which == "current" else server.staged_bundle}

    def start(self):
        token = "rotation-" + secrets.token_hex(4)
        initial = ",".join("%s=https://127.0.0.1:%d" % (m["name"], m["peer_port"]) for m in self.members)
        env = dict(os.environ, GOMAXPROCS="2")
        for member in self.members:
            client_url = "https://127.0.0.1:%d" % member["client_port"]
            peer_url = "https://127.0.0.1:%d" % member["peer_port"]
            self.processes.start("etcd-" + member["name"], [
                self.etcd, "--name", member["name"], "--data-dir", os.path.join(self.work, member["name"] + ".etcd"),
                "--logger=zap", "--log-level=info",
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", token,
                "--cert-file", member["server"][0], "--key-file", member["server"][1],
                "--trusted-ca-file", member["trusted"], "--client-cert-auth",
                "--peer-cert-file", member["peer"][0], "--peer-key-file", member["peer"][1],
                "--peer-trusted-ca-file", member["peer_trusted"], "--peer-client-cert-auth",
                "--heartbeat-interval", "100", "--election-timeout", "1000",
            ], env=env, stop_signal=signal.SIGKILL)  # throw-away data dirs
        for member in self.members:
            wait_until(lambda m=member: port_open(m["client_port"]), timeout=15,
                       what="etcd %s listening" % member["name"], processes=self.processes)

    def etcdctl(self, which, *args, endpoints=None, timeout=15, command_timeout="3s"):
        client = self.clients[which]
        endpoints = endpoints or ["https://127.0.0.1:%d" % m["client_port"] for m in self.members]
        cmd = [self.etcdctl_bin, "--endpoints", ",".join(endpoints), "--cacert", client["cacert"], "--cert",
               client["cert"], "--key", client["key"], "--dial-timeout", "2s", "--command-timeout",
               command_timeout] + list(args)
        return run(cmd, timeout=timeout, env=dict(os.environ, ETCDCTL_API="3"))

    def endpoint(self, index):
        return ["https://127.0.0.1:%d" % self.members[index]["client_port"]]


def _cluster_healthy(cluster, which):
    result = cluster.etcdctl(which, "endpoint", "health", "--cluster", "-w", "json", timeout=20)
    if result.returncode != 0:
        return None
    report = json.loads(result.stdout)
    return report if len(report) == 2 and all(entry.get("health") for entry in report) else None


@pytest.mark.parametrize("name", ["cross_default", "cross_custom", "cross_rotated", "renew_custom"])
def test_live_etcd_mid_rotation(lab, name, openssl, processes, free_port, tmp_path):
    lab.ok(name)
    cluster = MidRotationEtcd(lab, name, openssl, processes, free_port, str(tmp_path))
    cluster.start()
    for which in ("current", "new"):
        wait_until(lambda w=which: _cluster_healthy(cluster, w), timeout=ETCD_FORM_TIMEOUT, interval=0.5,
                   what="both members healthy (client on the %s CA)" % which, processes=processes)
    for writer, reader in (("current", "new"), ("new", "current")):
        key = "/rotation/%s/%s" % (name, secrets.token_hex(4))
        value = "written-by-%s-client-on-a" % writer
        put = cluster.etcdctl(writer, "put", key, value, endpoints=cluster.endpoint(0))
        assert put.returncode == 0 and "OK" in put.stdout, put.stdout + put.stderr
        get = cluster.etcdctl(reader, "get", key, "--print-value-only", endpoints=cluster.endpoint(1))
        assert get.returncode == 0 and get.stdout.strip() == value, get.stdout + get.stderr
    # curl (OpenSSL) as an old client of member B, which serves new leaf + staged bundle: for a cross-signed set
    # OpenSSL stops at the self-signed twin that precedes the cross-signed cert (see the module docstring), while
    # Go clients (etcdctl above, k3s, kubelet) succeed. A renewed set has no twin: curl succeeds.
    old = cluster.clients["current"]
    probe = run([find_tool("curl"), "-sS", "--max-time", "5", "--cacert", old["cacert"], "--cert", old["cert"], "--key",
                 old["key"], "https://127.0.0.1:%d/health" % cluster.members[1]["client_port"]], timeout=15)
    if ALL_SETS[name][1] == "renew":
        assert probe.returncode == 0 and "true" in probe.stdout, probe.stdout + probe.stderr
    else:
        assert probe.returncode == 0 or "self-signed certificate in certificate chain" in probe.stderr, probe.stderr
        print("curl (OpenSSL) old client -> new member: rc=%d %s" % (probe.returncode, probe.stderr.strip()))
    processes.assert_alive()


def test_live_etcd_new_root_no_quorum(lab, openssl, processes, free_port, tmp_path):
    lab.ok("new_root")
    cluster = MidRotationEtcd(lab, "new_root", openssl, processes, free_port, str(tmp_path))
    cluster.start()
    deadline = time.monotonic() + NEGATIVE_WINDOW
    probes = 0
    while time.monotonic() < deadline:
        processes.assert_alive()
        for index, which in ((0, "current"), (1, "new")):
            # each member is reachable by the client its CA trusts; neither may report healthy (no quorum)
            result = cluster.etcdctl(which, "endpoint", "health", endpoints=cluster.endpoint(index), timeout=10,
                                     command_timeout="1s")
            assert result.returncode != 0, "member %s healthy with a new_root peer:\n%s\n%s" % (
                cluster.members[index]["name"], result.stdout, processes.logs())
            probes += 1
        time.sleep(1)
    assert probes >= 4
    logs = processes.logs(tail=400000)
    assert "certificate" in logs and ("unknown authority" in logs or "bad certificate" in logs), logs[-4000:]
