# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers of the TLS interop tests: real verifiers judge the CAs written by ``kubepki.certs.ca_chain``.

Nothing here trusts the collection's Python code: leaves are issued with the openssl CLI, chains are
judged by ``openssl verify``, a Go crypto/x509 program (``go/``), etcd, nginx, curl and kubectl.
A missing tool makes the test FAIL with the Debian package to install; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTION_ROOT = os.path.dirname(os.path.dirname(HERE))

# tool -> what provides it (Debian package names, as installed by scripts/bootstrap.sh)
TOOL_PACKAGES = {
    "openssl": "openssl",
    "go": "golang-go",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "nginx": "nginx",
    "curl": "curl",
    "kubectl": "kubectl (the preinstalled Google Cloud SDK kubectl package, or Debian kubernetes-client "
               "extracted by scripts/bootstrap.sh into .cache/kubernetes-client; never apt-get install it "
               "next to another kubectl)",
    "ansible-playbook": "ansible-core (pip install -r tests/requirements.txt into the venv running pytest)",
}

RANCHER = ("k3s", "rke2")

# generate-custom-ca-certs.sh's v3_ca profile (%s = basicConstraints value)
CA_EXTENSIONS = ("subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\nbasicConstraints=%s\n"
                 "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign\n")

# Fake kube-apiserver /version answer; the kubectl dispatcher picks the client of this minor.
FAKE_VERSION = {
    "major": "1", "minor": "31", "gitVersion": "v1.31.0", "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean", "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22.5", "compiler": "gc",
    "platform": "linux/amd64",
}

# ---------------------------------------------------------------------------------------------------
# Module scenarios: every option set the tests exercise. All run in ONE ansible-playbook (startup cost).
# "supplied" entries name CA material the fixture creates with the openssl CLI beforehand.
SCENARIOS = {
    "k3s-ec": {
        "options": {"distribution": "k3s", "root_key_type": "ecdsa-p256", "intermediate_key_type": "ecdsa-p256",
                    "ca_key_type": "ecdsa-p256", "key_format": "traditional"},
    },
    "rke2-rsa-pkcs8-constrained": {
        "options": {"distribution": "rke2", "root_key_type": "rsa-2048", "intermediate_key_type": "rsa-2048",
                    "ca_key_type": "rsa-2048", "service_key_type": "rsa-2048", "key_format": "pkcs8",
                    "constrain_path_length": True},
    },
    "k3s-p384-pkcs8-constrained": {
        "options": {"distribution": "k3s", "root_key_type": "ecdsa-p384", "intermediate_key_type": "ecdsa-p384",
                    "ca_key_type": "ecdsa-p384", "service_key_type": "ecdsa-p256", "key_format": "pkcs8",
                    "constrain_path_length": True},
    },
    "k3s-defaults-rsa4096": {
        # The module's defaults: RSA-4096 root and intermediate, like generate-custom-ca-certs.sh.
        "options": {"distribution": "k3s"},
    },
    "k3s-supplied-root": {
        "options": {"distribution": "k3s", "intermediate_key_type": "ecdsa-p256"},
        "supplied": "root+key",
    },
    "rke2-supplied-intermediate": {
        "options": {"distribution": "rke2", "ca_key_type": "rsa-3072", "key_format": "traditional"},
        "supplied": "root+intermediate+intermediate_key",
    },
    "kubeadm-rsa": {
        "options": {"distribution": "kubeadm", "ca_key_type": "rsa-2048", "key_format": "traditional"},
    },
    "kubeadm-ec-pkcs8-constrained": {
        "options": {"distribution": "kubeadm", "ca_key_type": "ecdsa-p256", "service_key_type": "ecdsa-p256",
                    "key_format": "pkcs8", "constrain_path_length": True},
    },
    "kubeadm-supplied-root": {
        "options": {"distribution": "kubeadm", "ca_key_type": "ecdsa-p256"},
        "supplied": "root+key",
    },
}

# The tls-dir files that hold private keys, per distribution.
RANCHER_CAS = ("server-ca", "client-ca", "request-header-ca", "etcd/server-ca", "etcd/peer-ca")
KUBEADM_CAS = ("ca", "front-proxy-ca", "etcd/ca")
ROLE_CAS = {
    "rancher": {"server": "server-ca", "client": "client-ca", "etcd-server": "etcd/server-ca",
                "etcd-peer": "etcd/peer-ca"},
    "kubeadm": {"server": "ca", "client": "ca", "etcd-server": "etcd/ca", "etcd-peer": "etcd/ca"},
}


# ---------------------------------------------------------------------------------------------------
# tools and processes
def find_tool(name: str) -> str:
    """Absolute path of ``name``; FAIL (never skip) naming the package that provides it."""
    candidates = [shutil.which(name)]
    if name == "nginx":
        candidates.append("/usr/sbin/nginx")
    if name == "kubectl":
        candidates.append(os.path.join(COLLECTION_ROOT, ".cache", "kubernetes-client", "usr", "bin", "kubectl"))
    if name == "ansible-playbook":
        candidates.insert(0, os.path.join(os.path.dirname(sys.executable), "ansible-playbook"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("required tool %r not found; install %s" % (name, TOOL_PACKAGES.get(name, name)), pytrace=False)
    return ""  # not reached


def run(cmd, *, timeout: float = 60, check: bool = False, env=None, input_data=None, cwd=None):
    """subprocess.run with text output and a hard timeout; ``check`` fails the test with the output."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False,
                                input=input_data, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        pytest.fail("timed out after %ss: %s\nstdout: %s\nstderr: %s"
                    % (timeout, " ".join(cmd), exc.stdout, exc.stderr), pytrace=False)
    if check and result.returncode != 0:
        pytest.fail("command failed (rc=%d): %s\nstdout: %s\nstderr: %s"
                    % (result.returncode, " ".join(cmd), result.stdout, result.stderr), pytrace=False)
    return result


class Processes:
    """Long-running peers started by a test; all are killed (by their own process group id) at teardown."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.started = []
        self.stop_signals = {}

    def start(self, name: str, cmd, *, env=None, stop_signal=signal.SIGTERM):
        log_path = os.path.join(self.log_dir, "%s.log" % name)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        self.started.append((name, proc, log_path))
        self.stop_signals[proc.pid] = stop_signal
        return proc

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for name, proc, log_path in self.started:
            with open(log_path, "rb") as handle:
                text = handle.read().decode("utf-8", "replace")
            parts.append("--- %s (pid %d, rc %s) ---\n%s" % (name, proc.pid, proc.poll(), text[-tail:]))
        return "\n".join(parts)

    def assert_alive(self) -> None:
        dead = [name for name, proc, _log in self.started if proc.poll() is not None]
        if dead:
            pytest.fail("process(es) exited early: %s\n%s" % (", ".join(dead), self.logs()), pytrace=False)

    def stop_all(self, grace: float = 3.0) -> None:
        """Signal every started process group (SIGTERM unless told), SIGKILL what is alive after ``grace`` s."""
        for _name, proc, _log in self.started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, self.stop_signals[proc.pid])
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for _name, proc, _log in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)


def wait_until(predicate, *, timeout: float, what: str, processes=None, interval: float = 0.25):
    """Poll ``predicate`` until it returns a true value; fail with the peers' logs after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if processes is not None:
            processes.assert_alive()
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail("timed out after %ss waiting for %s (last: %r)\n%s"
                % (timeout, what, last, processes.logs() if processes else ""), pytrace=False)
    return None  # not reached


class PortAllocator:
    """Free TCP ports on 127.0.0.1, never the same one twice in a session."""

    def __init__(self) -> None:
        self.given = set()

    def __call__(self) -> int:
        for _attempt in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in self.given:
                self.given.add(port)
                return port
        raise RuntimeError("no free port found")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------
# PEM helpers (text only: parsing is left to the real tools)
PEM_CERT_RE = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----\r?\n?", re.S)


def pem_certs(path: str) -> list:
    """The CERTIFICATE blocks of a file, each normalised to end with one LF."""
    with open(path, encoding="ascii") as handle:
        text = handle.read()
    return [block.rstrip("\r\n") + "\n" for block in PEM_CERT_RE.findall(text)]


def write_text(path: str, text: str, mode: int = 0o644) -> str:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return path


# ---------------------------------------------------------------------------------------------------
# openssl CLI issuer
class OpenSSL:
    def __init__(self, binary: str) -> None:
        self.binary = binary

    def __call__(self, *args, check: bool = True, timeout: float = 60, input_data=None):
        return run([self.binary] + [str(a) for a in args], check=check, timeout=timeout, input_data=input_data)

    def genkey(self, path: str, key_type: str = "ec") -> str:
        if key_type == "ec":
            self("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        else:
            self("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path)
        os.chmod(path, 0o600)
        return path

    @staticmethod
    def serial() -> str:
        # 127 random bits: positive, non-zero, well inside 20 octets.
        return "0x%032x" % (secrets.randbits(127) | 1)

    def self_signed_ca(self, directory: str, name: str, *, cn: str, key_type: str = "ec", days: int = 3650,
                       extensions=None):
        """A root CA, by default with the contrib script's v3_ca profile (AKI keyid:always → AKI == SKI)."""
        key = self.genkey(os.path.join(directory, name + ".key"), key_type)
        cert = os.path.join(directory, name + ".pem")
        ext = write_text(os.path.join(directory, name + ".ext"), "[req]\ndistinguished_name=dn\n[dn]\n[v3_ca]\n" +
                         (extensions or CA_EXTENSIONS % "critical,CA:true"))
        self("req", "-x509", "-new", "-key", key, "-subj", "/CN=" + cn, "-days", days, "-sha256",
             "-set_serial", self.serial(), "-config", ext, "-extensions", "v3_ca", "-out", cert)
        return cert, key

    def sub_ca(self, directory: str, name: str, *, cn: str, issuer_cert: str, issuer_key: str,
               key_type: str = "ec", days: int = 3000, pathlen=None, key=None):
        """A CA issued by ``issuer_cert`` (v3_ca profile); ``key`` reuses a key file (cross-signing)."""
        key = key or self.genkey(os.path.join(directory, name + ".key"), key_type)
        bc = "critical,CA:true" + (",pathlen:%d" % pathlen if pathlen is not None else "")
        return self.sign(directory, name, key, cn=cn, issuer_cert=issuer_cert, issuer_key=issuer_key, days=days,
                         extensions=CA_EXTENSIONS % bc)

    def leaf(self, directory: str, name: str, *, issuer_cert: str, issuer_key: str, cn: str, orgs=(),
             server: bool = False, client: bool = True, dns=(), ips=(), key_type: str = "ec", days: int = 30):
        """Issue a leaf with ``openssl x509 -req``; returns (cert, key)."""
        key = self.genkey(os.path.join(directory, name + ".key"), key_type)
        usages = (["serverAuth"] if server else []) + (["clientAuth"] if client else [])
        ext = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
               "extendedKeyUsage=%s\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" % ",".join(usages))
        sans = ["DNS:%s" % d for d in dns] + ["IP:%s" % i for i in ips]
        if sans:
            ext += "subjectAltName=%s\n" % ",".join(sans)
        subject = "".join("/O=%s" % o for o in orgs) + "/CN=%s" % cn
        return self.sign(directory, name, key, cn=None, subject=subject, issuer_cert=issuer_cert,
                         issuer_key=issuer_key, days=days, extensions=ext)

    def sign(self, directory, name, key, *, cn, issuer_cert, issuer_key, days, extensions, subject=None):
        csr = os.path.join(directory, name + ".csr")
        cert = os.path.join(directory, name + ".crt")
        ext = write_text(os.path.join(directory, name + ".ext"), "[ext]\n" + extensions)
        self("req", "-new", "-key", key, "-subj", subject or "/CN=" + cn, "-out", csr)
        self("x509", "-req", "-in", csr, "-CA", issuer_cert, "-CAkey", issuer_key, "-set_serial", self.serial(),
             "-days", days, "-sha256", "-extfile", ext, "-extensions", "ext", "-out", cert)
        return cert, key

    def sign_dated(self, directory, name, key, *, cn, issuer_cert, issuer_key, start, end, extensions):
        """Like ``sign`` with explicit validity (``YYYYMMDDHHMMSSZ``), via ``openssl ca`` (x509 -req cannot)."""
        db_dir = os.path.join(directory, name + ".ca-db")
        os.makedirs(db_dir)
        write_text(os.path.join(db_dir, "index.txt"), "")
        config = write_text(os.path.join(db_dir, "ca.cnf"),
                            "[ca]\ndefault_ca=own\n[own]\ndatabase=%s/index.txt\nnew_certs_dir=%s\n"
                            "default_md=sha256\npolicy=any\nunique_subject=no\nrand_serial=yes\n"
                            "[any]\ncommonName=supplied\n[ext]\n%s" % (db_dir, db_dir, extensions))
        csr = os.path.join(directory, name + ".csr")
        cert = os.path.join(directory, name + ".crt")
        self("req", "-new", "-key", key, "-subj", "/CN=" + cn, "-out", csr)
        self("ca", "-batch", "-notext", "-config", config, "-in", csr, "-cert", issuer_cert, "-keyfile", issuer_key,
             "-startdate", start, "-enddate", end, "-extensions", "ext", "-out", cert)
        return cert, key

    def verify(self, cert: str, *, cafile: str, untrusted=None, purpose=None, strict: bool = True):
        args = ["verify"]
        if strict:
            args.append("-x509_strict")
        if purpose:
            args += ["-purpose", purpose]
        args += ["-CAfile", cafile]
        if untrusted:
            args += ["-untrusted", untrusted]
        args.append(cert)
        return self(*args, check=False)

    def fingerprint_hex(self, cert: str) -> str:
        out = self("x509", "-noout", "-fingerprint", "-sha256", "-in", cert).stdout
        return out.strip().split("=", 1)[1].replace(":", "").lower()


# ---------------------------------------------------------------------------------------------------
# Go verifier
class GoVerifier:
    def __init__(self, binary: str) -> None:
        self.binary = binary

    def verify(self, cert: str, *, roots: str, intermediates=None, usage: str = "any", dns=None):
        cmd = [self.binary, "verify", "--roots", roots, "--usage", usage]
        if intermediates:
            cmd += ["--intermediates", intermediates]
        if dns:
            cmd += ["--dns", dns]
        cmd.append(cert)
        return run(cmd, timeout=30)

    def hashca(self, path: str) -> str:
        result = run([self.binary, "hashca", path], timeout=30, check=True)
        return result.stdout.strip()


# ---------------------------------------------------------------------------------------------------
# the module under test
def collections_path() -> str:
    configured = os.environ.get("ANSIBLE_COLLECTIONS_PATH") or os.environ.get("ANSIBLE_COLLECTIONS_PATHS")
    if configured:
        return configured
    parts = COLLECTION_ROOT.split(os.sep)
    if len(parts) >= 3 and parts[-3] == "ansible_collections":
        return os.sep.join(parts[:-3])
    pytest.fail("set ANSIBLE_COLLECTIONS_PATH to the directory holding ansible_collections/kubepki/certs "
                "(or run from a staged collection)", pytrace=False)
    return ""  # not reached


def run_playbook(tasks: list, work_dir: str, *, timeout: float = 240) -> dict:
    """Run module ``tasks`` (each with a unique ``name``) on localhost; return {task name: registered result}.

    ansible-core 2.19 ships no json stdout callback (it moved to ansible.posix), so every task is
    registered and a final ``ansible.builtin.copy`` writes all results to a JSON file.
    """
    playbook = os.path.join(work_dir, "playbook.yml")
    results_file = os.path.join(work_dir, "results.json")
    play_tasks, names = [], []
    for index, task in enumerate(tasks):
        variable = "interop_result_%d" % index
        play_tasks.append(dict(task, register=variable, ignore_errors=True))
        names.append((task["name"], variable))
    mapping = ", ".join("%s: %s" % (json.dumps(name), variable) for name, variable in names)
    play_tasks.append({"name": "write results", "ansible.builtin.copy": {
        "dest": results_file, "mode": "0600", "content": "{{ {%s} | to_json }}" % mapping}})
    play = [{"name": "interop", "hosts": "localhost", "gather_facts": False, "tasks": play_tasks}]
    write_text(playbook, json.dumps(play, indent=1))
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": collections_path(),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": os.path.join(work_dir, "ansible-tmp"),
    })
    cmd = [find_tool("ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable, playbook]
    result = run(cmd, env=env, timeout=timeout)
    if not os.path.exists(results_file):
        pytest.fail("ansible-playbook wrote no results (rc=%d)\nstdout: %s\nstderr: %s"
                    % (result.returncode, result.stdout[-6000:], result.stderr[-4000:]), pytrace=False)
    with open(results_file, encoding="utf-8") as handle:
        return json.load(handle)


class Scenario:
    """One module run: its tls dir, options, result, and where each CA's files are."""

    def __init__(self, name: str, path: str, options: dict, result: dict, openssl_tool: OpenSSL) -> None:
        self.name = name
        self.path = path
        self.options = options
        self.result = result
        self.distribution = options["distribution"]
        self.rancher = self.distribution in RANCHER
        self.openssl = openssl_tool
        self.work = path + ".work"
        os.makedirs(self.work, exist_ok=True)

    def check_ok(self) -> None:
        if self.result.get("failed") or "cas" not in self.result:
            pytest.fail("module run %s failed: %s" % (self.name, json.dumps(self.result, indent=1)[:6000]),
                        pytrace=False)

    def file(self, relative: str) -> str:
        return os.path.join(self.path, relative)

    @property
    def key_format(self) -> str:
        return self.options.get("key_format", "traditional")

    @property
    def constrained(self) -> bool:
        return bool(self.options.get("constrain_path_length"))

    @property
    def has_root(self) -> bool:
        return self.rancher or "root_cert" in self.options

    def root_file(self) -> str | None:
        """The self-signed root the cluster CAs chain to (None for self-signed kubeadm CAs)."""
        if self.rancher:
            return self.file("root-ca.pem")
        return self.options.get("root_cert")

    def ca_names(self) -> tuple:
        return RANCHER_CAS if self.rancher else KUBEADM_CAS

    def role(self, role: str) -> str:
        """The CA playing ``role`` (server, client, etcd-server, etcd-peer) in this distribution."""
        table = ROLE_CAS["rancher" if self.rancher else "kubeadm"]
        return table[role]

    def ca_alone(self, ca: str) -> str:
        """A file holding only the CA certificate ``ca`` (k3s ``<ca>.pem``; first cert of kubeadm's .crt)."""
        if self.rancher:
            return self.file(ca + ".pem")
        certs = pem_certs(self.file(ca + ".crt"))
        out = os.path.join(self.work, ca.replace("/", "-") + ".alone.pem")
        return write_text(out, certs[0])

    def foreign_lookalike(self, ca: str, directory: str):
        """A self-signed CA named like ``ca`` (same subject CN) but unrelated to it, and a kube-apiserver server
        leaf (DNS localhost) it issued: (foreign CA cert, leaf cert)."""
        subject = self.openssl("x509", "-noout", "-subject", "-nameopt", "compat", "-in", self.ca_alone(ca)).stdout
        foreign_cert, foreign_key = self.openssl.self_signed_ca(directory, "foreign", cn=subject.split("CN=", 1)[1].strip())
        leaf, _key = self.openssl.leaf(directory, "foreign-leaf", issuer_cert=foreign_cert, issuer_key=foreign_key,
                                       cn="kube-apiserver", server=True, dns=("localhost",))
        return foreign_cert, leaf

    def ca_bundle(self, ca: str) -> str:
        return self.file(ca + ".crt")

    def ca_key(self, ca: str) -> str:
        return self.file(ca + ".key")

    def trust_root(self, ca: str) -> str:
        """File to pass as -CAfile / --roots to anchor ``ca``: the root, or the CA itself when self-signed."""
        return self.root_file() or self.ca_alone(ca)

    def intermediates_for(self, ca: str) -> str | None:
        """Untrusted certs between ``ca`` and the root (the intermediate CA for k3s/RKE2)."""
        if self.rancher:
            return self.file("intermediate-ca.pem")
        return None

    def untrusted_for(self, ca: str) -> str | None:
        """A file with ``ca`` and every CA above it except the root (what a peer sends with a leaf)."""
        if not self.has_root:
            return None
        out = os.path.join(self.work, ca.replace("/", "-") + ".untrusted.pem")
        return write_text(out, "".join(pem_certs(self.ca_bundle(ca))[:-1]))

    def serving_chain(self, leaf_cert: str, ca: str) -> str:
        """leaf + every cert above it except the self-signed root: what a server must send."""
        with open(leaf_cert, encoding="ascii") as handle:
            text = handle.read()
        bundle = pem_certs(self.ca_bundle(ca))
        above = bundle[:-1] if self.has_root else []
        return write_text(leaf_cert[:-len(".crt")] + ".chain.crt", text + "".join(above))

    def key_files(self) -> list:
        keys = [self.ca_key(ca) for ca in self.ca_names()]
        keys.append(self.file("service.key" if self.rancher else "sa.key"))
        if self.rancher:
            keys.append(self.file("intermediate-ca.key"))
            if os.path.exists(self.file("root-ca.key")):
                keys.append(self.file("root-ca.key"))
        return keys


def prepare_supplied(name: str, spec: dict, openssl_tool: OpenSSL, supplied_dir: str) -> dict:
    """Create the operator's CA material for a scenario with the openssl CLI; return the module options."""
    options = {}
    kind = spec.get("supplied")
    if not kind:
        return options
    directory = os.path.join(supplied_dir, name)
    os.makedirs(directory)
    root_cert, root_key = openssl_tool.self_signed_ca(directory, "root", cn="%s-operator-root" % name,
                                                      key_type="rsa", days=7300)
    options["root_cert"] = root_cert
    if kind == "root+key":
        options["root_key"] = root_key
    elif kind == "root+intermediate+intermediate_key":
        inter_cert, inter_key = openssl_tool.sub_ca(directory, "intermediate", cn="%s-operator-intermediate" % name,
                                                    issuer_cert=root_cert, issuer_key=root_key, key_type="ec")
        options["intermediate_cert"] = inter_cert
        options["intermediate_key"] = inter_key
    return options
