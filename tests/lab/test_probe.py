# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The lab traffic probe (``tests/lab/probe.py``) against local HTTPS servers and a local etcd on 127.0.0.1.

No lab needed: ``http.server`` + ``ssl`` servers run in threads, with certificates made by the openssl CLI; the
probe's clients are real (its Go TLS client, Debian's etcdctl). Server A moves from a leaf under CA-old to a leaf
under a new CA that CA-old cross-signed (the old client must not notice), then to an unrelated CA (certificate
failures must be counted with Go's x509 error); the current client must follow a rewritten ``--current-ca-file``.
The etcd tests start a one-member etcd (Debian etcd-server) with client-certificate TLS: acknowledged writes read
back, a write deleted behind the probe's back reported lost, a member killed and restarted under the probe
(failed puts resolved, one blip). A missing tool (openssl, go, etcd, etcdctl) fails the tests.
"""

from __future__ import annotations

import collections
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "probe.py")
CMD_TIMEOUT = 60

OPENSSL_CNF = """
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[both]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


class Pki:
    """Certificates made with the openssl CLI (EC P-256) in one directory."""

    def __init__(self, directory):
        self.dir = directory
        self.cnf = os.path.join(directory, "openssl.cnf")
        self.serial = 1000
        with open(self.cnf, "w", encoding="ascii") as handle:
            handle.write(OPENSSL_CNF)

    def path(self, name, ext):
        return os.path.join(self.dir, "%s.%s" % (name, ext))

    def openssl(self, *args):
        result = subprocess.run(["openssl"] + list(args), check=False, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, "openssl %s: %s" % (" ".join(args), result.stderr)

    def key(self, name):
        self.openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", self.path(name, "key"))
        return self.path(name, "key")

    def root(self, name, cn):
        key = self.key(name)
        self.openssl("req", "-x509", "-new", "-key", key, "-subj", "/CN=%s" % cn, "-days", "30", "-sha256", "-config", self.cnf,
                     "-extensions", "v3_ca", "-out", self.path(name, "crt"))
        return self.path(name, "crt"), key

    def issue(self, name, cn, issuer, ext, key=None):
        """A certificate for ``key`` (new key if None) signed by ``issuer`` = (crt, key)."""
        key = key or self.key(name)
        csr = self.path(name, "csr")
        self.openssl("req", "-new", "-key", key, "-subj", "/CN=%s" % cn, "-config", self.cnf, "-out", csr)
        self.serial += 1
        self.openssl("x509", "-req", "-in", csr, "-CA", issuer[0], "-CAkey", issuer[1], "-set_serial", str(self.serial), "-days", "30", "-sha256",
                     "-extfile", self.cnf, "-extensions", ext, "-out", self.path(name, "crt"))
        return self.path(name, "crt"), key

    def bundle(self, name, *files):
        path = self.path(name, "pem")
        with open(path, "w", encoding="ascii") as out:
            for item in files:
                with open(item, encoding="ascii") as handle:
                    out.write(handle.read())
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("the openssl CLI is needed (Debian package openssl)")
    pki = Pki(str(tmp_path_factory.mktemp("probe-pki")))
    old = pki.root("ca-old", "probe-ca-old")
    new_root_key = pki.key("ca-new-root")
    # new root: self-signed form and the form cross-signed by the old root (same subject and key)
    pki.openssl("req", "-x509", "-new", "-key", new_root_key, "-subj", "/CN=probe-ca-new-root", "-days", "30", "-sha256", "-config", pki.cnf,
                "-extensions", "v3_ca", "-out", pki.path("ca-new-root-ssigned", "crt"))
    ssigned = (pki.path("ca-new-root-ssigned", "crt"), new_root_key)
    xsigned = pki.issue("ca-new-root-xsigned", "probe-ca-new-root", old, "v3_ca", key=new_root_key)
    intermediate = pki.issue("ca-new", "probe-ca-new", ssigned, "v3_ca")
    other = pki.root("ca-other", "probe-ca-unrelated")
    client_ca = pki.root("ca-client", "probe-client-ca")
    certs = {
        "old": old, "other": other, "client_ca": client_ca,
        "leaf_old": pki.issue("leaf-old", "server-old", old, "server"),
        "leaf_new": pki.issue("leaf-new", "server-new", intermediate, "server"),
        "leaf_other": pki.issue("leaf-other", "server-other", other, "server"),
        "client": pki.issue("client-admin", "system:admin", client_ca, "client"),
    }
    # what a rotated server sends: leaf + new intermediate + cross-signed new root
    certs["chain_new"] = pki.bundle("chain-new", certs["leaf_new"][0], intermediate[0], xsigned[0])
    # what k3s sends: leaf + the whole server-ca.crt bundle (intermediate, self-signed root, cross-signed root, old root)
    certs["chain_k3s"] = pki.bundle("chain-k3s", certs["leaf_new"][0], intermediate[0], ssigned[0], xsigned[0], old[0])
    # a rotation that forgot the cross-signature
    certs["chain_not_cross"] = pki.bundle("chain-not-cross", certs["leaf_new"][0], intermediate[0], ssigned[0])
    certs["pki"] = pki
    return certs


def server_context(chain, key, client_ca):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    ctx.load_verify_locations(cafile=client_ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class TLSServer(http.server.ThreadingHTTPServer):
    """k3s-like endpoints: /cacerts for anyone, /readyz only with a client certificate under the client CA."""

    daemon_threads = True

    def __init__(self, ctx, port=0):
        self.ctx = ctx
        self.phase = 1
        self.answer = None  # e.g. (503, b"...") to answer every request so (a server shutting down)
        self.counts = collections.Counter()
        self.count_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.settimeout(5)
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        del request, client_address

    def served(self, phase, kind):
        with self.count_lock:
            return self.counts[(phase, kind)]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            raise ConnectionAbortedError(str(exc)) from exc
        super().setup()

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        del format, args

    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # pylint: disable=invalid-name
        if self.server.answer:
            kind = (self.headers.get("User-Agent") or "").rsplit("/", 1)[-1]
            with self.server.count_lock:
                self.server.counts[("answer", kind)] += 1
            return self.reply(*self.server.answer)
        if self.path == "/cacerts":
            body = b"-----BEGIN CERTIFICATE-----\n...\n"
        elif self.path == "/readyz":
            if not self.request.getpeercert(binary_form=True):
                return self.reply(401, b"Unauthorized\n")
            body = b"ok"
        else:
            return self.reply(404, b"404 page not found\n")
        kind = (self.headers.get("User-Agent") or "").rsplit("/", 1)[-1]
        with self.server.count_lock:
            self.server.counts[(self.server.phase, kind)] += 1
        return self.reply(200, body)


@pytest.fixture
def servers(pki):
    started = []

    def start(leaf, port=0):
        httpd = TLSServer(server_context(leaf[0], leaf[1], pki["client_ca"][0]), port)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        started.append((httpd, thread))
        return httpd

    yield start
    for httpd, thread in started:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))


def probe(*args, timeout=CMD_TIMEOUT):
    return subprocess.run([sys.executable, PROBE] + [str(arg) for arg in args], check=False, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", autouse=True)
def real_clients():
    """The probe's clients: go (to build tests/lab/tlsclient once; cached) and etcdctl. Missing: the tests fail."""
    for tool, package in (("go", "golang-go"), ("etcdctl", "etcd-client"), ("etcd", "etcd-server"), ("openssl", "openssl")):
        assert shutil.which(tool), "needs %s (Debian package %s; scripts/bootstrap.sh installs it)" % (tool, package)


def read_jsonl(out):
    with open(os.path.join(out, "probe.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_summary(out):
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def write_atomic(path, text):
    with open(path + ".tmp", "w", encoding="ascii") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def read_text(path):
    with open(path, encoding="ascii") as handle:
        return handle.read()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_args(pki):
    return ["--client-cert", pki["client"][0], "--client-key", pki["client"][1]]


def test_rotation_old_client_survives_cross_signed_and_current_follows_file(pki, servers, tmp_path):
    server_a = servers(pki["leaf_old"])
    server_b = servers(pki["leaf_old"])
    target_a, target_b = "127.0.0.1:%d" % server_a.server_address[1], "127.0.0.1:%d" % server_b.server_address[1]
    out = str(tmp_path / "probe")
    current = str(tmp_path / "current-ca.crt")
    shutil.copyfile(pki["old"][0], current)
    # --pin: one client per target, so that B's row shows that B never failed while A did
    result = probe("start", "--pin", "--targets", "%s,%s" % (target_a, target_b), "--old-ca", pki["old"][0], "--current-ca-file", current,
                   *client_args(pki), "--interval", "0.05", "--duration", "60", "--max-requests", "100000", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "probe started" in result.stdout
    try:
        # phase 1: A on a leaf under CA-old
        wait_for(lambda: server_a.served(1, "old") >= 3 and server_a.served(1, "current") >= 3, 15, "phase 1 traffic")
        # phase 2: A on a leaf under a new CA that CA-old cross-signed (chain: leaf + intermediate + cross-signed root)
        server_a.ctx = server_context(pki["chain_new"], pki["leaf_new"][1], pki["client_ca"][0])
        server_a.phase = 2
        wait_for(lambda: server_a.served(2, "old") >= 5 and server_a.served(2, "current") >= 5, 15, "phase 2 traffic")
        # phase 3: A on a leaf under an unrelated CA: both clients fail
        t_unrelated = time.time()
        server_a.ctx = server_context(pki["leaf_other"][0], pki["leaf_other"][1], pki["client_ca"][0])
        server_a.phase = 3

        def failing(kind):
            return any(line["kind"] == kind and line["target"] == target_a and line["fail"] > 0 for line in read_jsonl(out))

        wait_for(lambda: failing("old") and failing("current"), 15, "failures against the unrelated CA")
        # phase 4: the current client gets a bundle that trusts the unrelated CA (and still CA-old for B)
        t_rewrite = time.time()
        write_atomic(current, read_text(pki["other"][0]) + read_text(pki["old"][0]))
        server_a.phase = 4
        wait_for(lambda: server_a.served(4, "current") >= 3, 15, "the current client to follow the rewritten CA file")
        t_followed = time.time()
        assert server_a.served(4, "old") == 0
    finally:
        stopped = probe("stop", "--out", out, "--timeout", "20")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.startswith("probe: old ")
    assert "verdict: current: " in stopped.stdout and " certificate failures" in stopped.stdout
    assert "stop: stop-file" in stopped.stdout
    assert not os.path.exists(os.path.join(out, "probe.pid"))

    summary = read_summary(out)
    assert summary["stop_reason"] == "stop-file"
    assert summary["path"] == "/readyz"
    old, cur = summary["kinds"]["old"]["targets"], summary["kinds"]["current"]["targets"]
    # B never changed: no failure at all
    assert old[target_b]["fail"] == 0 and old[target_b]["ok"] > 0
    assert cur[target_b]["fail"] == 0 and cur[target_b]["ok"] > 0
    # A: nothing failed before the unrelated CA (the cross-signed phase is seamless for the old client)
    for rows in (old, cur):
        first = rows[target_a]["first_failure"]
        assert first is not None and first["t"] >= t_unrelated - 0.02, first
        assert "x509: certificate signed by unknown authority" in first["error"], first
    assert server_a.served(2, "old") >= 5
    # the old client kept failing to the end; the current one stopped failing once it re-read the file
    assert old[target_a]["last_failure"]["t"] >= t_rewrite - 0.02
    assert server_a.served(4, "old") == 0
    assert sum(server_a.served(phase, "old") for phase in (1, 2, 3, 4)) == old[target_a]["ok"]
    assert cur[target_a]["last_failure"]["t"] <= t_followed + 0.02
    assert cur[target_a]["last_ok"]["t"] > cur[target_a]["last_failure"]["t"]
    assert [change["initial"] for change in summary["current_ca_changes"]] == [True, False]
    # totals add up, and the per-second lines add up to them
    total_ok = total_fail = 0
    lines = read_jsonl(out)
    for kind, entry in summary["kinds"].items():
        assert entry["ok"] == sum(row["ok"] for row in entry["targets"].values())
        assert entry["fail"] == sum(row["fail"] for row in entry["targets"].values())
        assert entry["requests"] == entry["ok"] + entry["fail"]
        for target, row in entry["targets"].items():
            mine = [line for line in lines if line["kind"] == kind and line["target"] == target]
            assert sum(line["ok"] for line in mine) == row["ok"]
            assert sum(line["fail"] for line in mine) == row["fail"]
        total_ok += entry["ok"]
        total_fail += entry["fail"]
    assert summary["failures"] == total_fail > 0
    assert summary["requests"] == total_ok + total_fail
    assert summary["first_failure"]["t"] >= t_unrelated - 0.02
    assert set(lines[0]) == {"t", "elapsed", "kind", "target", "ok", "fail", "failovers", "cert_failures", "last_error"}
    assert summary["failovers"] == 0 and all(entry["mode"] == "pin" and entry["failovers"] == 0 for entry in summary["kinds"].values())
    # every failure of A was a certificate failure (Go's x509 error), counted as such; the verdict flags both kinds
    for kind in ("old", "current"):
        assert summary["kinds"][kind]["cert_failures"] == summary["kinds"][kind]["fail"] > 0
    assert not summary["verdict"]["ok"] and sorted(summary["verdict"]["problems"]) == ["current", "old"]
    # exit codes for a playbook's assertion
    assert probe("summary", "--out", out, "--fail-on", "old").returncode == 1
    assert probe("summary", "--out", out).returncode == 0


def test_old_client_builds_paths_like_go(pki, servers, tmp_path):
    """The server sends leaf + intermediate + new self-signed root + cross-signed root + old root (k3s after a
    cross-signed rotation): OpenSSL clients stop at the self-signed new root, Go (the probe's client, as kubectl)
    finds the path through the cross-signed root. Without the cross-signature no path exists."""
    k3s_order = servers((pki["chain_k3s"], pki["leaf_new"][1]))
    not_cross = servers((pki["chain_not_cross"], pki["leaf_new"][1]))
    target_k3s, target_not_cross = ("127.0.0.1:%d" % srv.server_address[1] for srv in (k3s_order, not_cross))
    openssl = subprocess.run(["openssl", "s_client", "-connect", target_k3s, "-CAfile", pki["old"][0], "-verify_return_error"],
                             input="", check=False, capture_output=True, text=True, timeout=30)
    assert openssl.returncode != 0 and "self-signed certificate in certificate chain" in openssl.stdout + openssl.stderr
    common = ["--pin", "--targets", "%s,%s" % (target_k3s, target_not_cross), "--old-ca", pki["old"][0], "--current-ca-file", pki["old"][0],
              *client_args(pki), "--interval", "0.05", "--max-requests", "16", "--duration", "20"]
    result = probe("run", *common, "--out", tmp_path / "go")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(str(tmp_path / "go"))
    for kind in ("old", "current"):
        good, bad = summary["kinds"][kind]["targets"][target_k3s], summary["kinds"][kind]["targets"][target_not_cross]
        assert good["fail"] == 0 and good["ok"] >= 2, good
        assert bad["ok"] == 0 and bad["fail"] >= 2 and bad["cert_failures"] == bad["fail"], bad
        assert "x509: certificate signed by unknown authority" in bad["last_error"], bad


def test_stops_at_duration_and_counts_refused_connections_when_pinned(pki, servers, tmp_path):
    server_b = servers(pki["leaf_old"])
    target_b = "127.0.0.1:%d" % server_b.server_address[1]
    closed = "127.0.0.1:%d" % free_port()
    out = str(tmp_path / "probe")
    started = time.monotonic()
    result = probe("run", "--pin", "--targets", "%s,%s" % (target_b, closed), "--old-ca", pki["old"][0], "--current-ca-file", pki["old"][0],
                   *client_args(pki), "--interval", "0.05", "--duration", "1.5", "--out", out)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stop: duration" in result.stdout
    summary = read_summary(out)
    assert summary["stop_reason"] == "duration"
    assert 1.5 <= summary["duration"] < 5 and took < 10
    for kind in ("old", "current"):
        rows = summary["kinds"][kind]["targets"]
        assert rows[target_b]["fail"] == 0 and rows[target_b]["ok"] >= 5
        assert rows[closed]["ok"] == 0 and rows[closed]["fail"] >= 5
        assert "connect: connection refused" in rows[closed]["last_error"] and rows[closed]["cert_failures"] == 0
    assert len({line["elapsed"] for line in read_jsonl(out)}) >= 2


def test_stops_at_max_requests_and_probes_cacerts_without_client_cert(pki, servers, tmp_path):
    server_b = servers(pki["leaf_old"])
    target_b = "127.0.0.1:%d" % server_b.server_address[1]
    out = str(tmp_path / "probe")
    result = probe("run", "--targets", target_b, "--old-ca", pki["old"][0], "--current-ca-file", pki["old"][0], "--interval", "0.05",
                   "--duration", "30", "--max-requests", "7", "--out", out, "--fail-on", "old,current")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(out)
    assert summary["stop_reason"] == "max-requests"
    assert summary["requests"] == 7 and summary["failures"] == 0
    assert summary["path"] == "/cacerts"
    assert summary["duration"] < 10
    assert server_b.served(1, "old") + server_b.served(1, "current") == 7


def test_stop_file_ends_a_foreground_run(pki, servers, tmp_path):
    server_b = servers(pki["leaf_old"])
    out = tmp_path / "probe"
    out.mkdir()
    (out / "stop").write_text("left over from an earlier run\n")
    cmd = [sys.executable, PROBE, "run", "--targets", "127.0.0.1:%d" % server_b.server_address[1], "--old-ca", pki["old"][0],
           "--current-ca-file", pki["old"][0], "--interval", "0.1", "--duration", "60", "--out", str(out)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            wait_for(lambda: (out / "probe.jsonl").exists() and server_b.served(1, "old") >= 2, 15, "traffic")
            assert proc.poll() is None, "a stale stop file must not end a new run"
            (out / "stop").write_text("stop\n")
            output = proc.communicate(timeout=15)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert proc.returncode == 0, output
    assert read_summary(str(out))["stop_reason"] == "stop-file"


def test_sigterm_writes_summary(pki, servers, tmp_path):
    server_b = servers(pki["leaf_old"])
    out = str(tmp_path / "probe")
    result = probe("start", "--targets", "127.0.0.1:%d" % server_b.server_address[1], "--old-ca", pki["old"][0], "--current-ca-file",
                   pki["old"][0], "--interval", "0.1", "--duration", "60", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(os.path.join(out, "probe.pid"), encoding="ascii") as handle:
        pid = int(handle.read())
    again = probe("start", "--targets", "127.0.0.1:1", "--old-ca", pki["old"][0], "--current-ca-file", pki["old"][0], "--out", out)
    assert again.returncode == 2 and "already runs" in again.stderr
    wait_for(lambda: server_b.served(1, "current") >= 2, 15, "traffic")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: os.path.exists(os.path.join(out, "summary.json")), 15, "the summary after SIGTERM")
    assert read_summary(out)["stop_reason"] == "signal %d" % signal.SIGTERM
    stopped = probe("stop", "--out", out, "--timeout", "10")
    assert stopped.returncode == 0 and "stop: signal" in stopped.stdout


def test_lab_state_adds_the_servers(pki, servers, tmp_path):
    server_b = servers(pki["leaf_old"])
    state = tmp_path / "state.json"
    hosts = [{"name": "server1", "group": "servers", "address": "127.0.0.1"}, {"name": "agent1", "group": "agents", "address": "127.0.0.2"}]
    state.write_text(json.dumps({"subnet": "10.123.0.0/24", "hosts": hosts}))
    out = str(tmp_path / "probe")
    result = probe("run", "--lab-state", state, "--lab-port", server_b.server_address[1], "--old-ca", pki["old"][0], "--current-ca-file",
                   pki["old"][0], "--max-requests", "4", "--interval", "0.05", "--out", out, "--fail-on", "old,current")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(out)
    assert summary["settings"]["targets"] == ["127.0.0.1:%d" % server_b.server_address[1]]
    assert summary["requests"] == 4 and summary["failures"] == 0


@pytest.mark.parametrize("target,message", [
    ("192.0.2.1:6443", "outside the allowed networks"),
    ("no-such-host.kubepki.invalid:6443", "does no DNS"),
    ("127.0.0.1", "needs a port"),
])
def test_refuses_targets_off_the_lab(pki, tmp_path, target, message):
    result = probe("run", "--targets", target, "--old-ca", pki["old"][0], "--current-ca-file", pki["old"][0], "--duration", "1",
                   "--out", str(tmp_path / "probe"))
    assert result.returncode == 2
    assert message in result.stderr


def test_refuses_bad_input(pki, tmp_path):
    out = str(tmp_path / "probe")
    assert "needs --old-ca" in probe("run", "--targets", "127.0.0.1:1", "--out", out).stderr
    bad = probe("run", "--targets", "127.0.0.1:1", "--old-ca", pki["old"][1], "--current-ca-file", pki["old"][0], "--out", out)
    assert bad.returncode == 2 and "cannot load the old client's CA" in bad.stderr
    assert probe("run", "--targets", "127.0.0.1:1", "--old-ca", pki["old"][0], "--current-ca-file", pki["old"][0], "--out", out,
                 "--duration", "0").returncode == 2
    assert probe("stop", "--out", out).returncode == 3


# ---------------------------------------------------------------------------------------------
# one logical client per kind over all servers (failover as behind k3s's client load balancer)


def read_requests(out):
    with open(os.path.join(out, "requests.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def address(httpd):
    return "127.0.0.1:%d" % httpd.server_address[1]


class RawListener:
    """A TCP listener on 127.0.0.1 that never speaks TLS: 'reset' accepts and resets every connection (a server
    closing with connections queued), 'silent' never accepts (the kernel completes the TCP handshake, TLS never starts)."""

    def __init__(self, mode):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.mode = mode
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    @property
    def target(self):
        return "127.0.0.1:%d" % self.sock.getsockname()[1]

    def loop(self):
        while not self.stop.is_set():
            if self.mode == "silent":
                self.stop.wait(0.1)
                continue
            try:
                conn = self.sock.accept()[0]
            except OSError:
                continue
            self.accepted += 1
            try:  # wait for the ClientHello: the client is in its TLS handshake, its dial is done
                conn.settimeout(2)
                conn.recv(1)
            except OSError:
                pass
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def raw_listener():
    made = []

    def make(mode):
        made.append(RawListener(mode))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


def check_consistent(out, summary):
    """Totals add up: kind = sum of its servers, per-second lines = totals, requests.jsonl = one line per request."""
    lines, requests = read_jsonl(out), read_requests(out)
    assert len(requests) == summary["requests"]
    for kind, entry in summary["kinds"].items():
        rows = entry["targets"].values()
        for field in ("ok", "fail", "failovers", "cert_failures"):
            assert entry[field] == sum(row[field] for row in rows), (kind, field, entry)
            assert entry[field] == sum(line[field] for line in lines if line["kind"] == kind), (kind, field)
        mine = [req for req in requests if req["kind"] == kind]
        assert sum(req["failovers"] for req in mine) == entry["failovers"]
        assert sum(1 for req in mine if req["ok"]) == entry["ok"]
        assert sum(1 for req in mine if req["ok"] and req["failovers"]) == entry["ok_after_failover"]
        assert sum(entry["failure_reasons"].values()) == entry["fail"]
        assert sum(entry["failover_reasons"].values()) == entry["failovers"]
        for req in mine:
            assert len(req["tried"]) - req["failovers"] == 1, req
            if kind != "etcd":  # etcd: the server is the member id that acknowledged the put
                assert (req["server"] == req["tried"][-1]) if req["ok"] else (req["server"] is None and req["error"]), req
    assert summary["failovers"] == sum(entry["failovers"] for entry in summary["kinds"].values())
    return requests


def test_failover_one_server_down_one_up(pki, servers, raw_listener, tmp_path):
    """A dead server (refused) and one resetting during the TLS handshake come first: every request succeeds,
    each client fails over once and then sticks to the server that answered."""
    good = servers(pki["leaf_old"])
    closed = "127.0.0.1:%d" % free_port()
    resetting = raw_listener("reset")
    out = str(tmp_path / "probe")
    result = probe("run", "--targets", "%s,%s,%s" % (closed, resetting.target, address(good)), "--old-ca", pki["old"][0],
                   "--current-ca-file", pki["old"][0], *client_args(pki), "--interval", "0.02", "--max-requests", "40", "--duration", "30",
                   "--out", out, "--fail-on", "old,current")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = read_summary(out)
    assert summary["requests"] == 40 and summary["failures"] == 0
    for kind in ("old", "current"):
        entry = summary["kinds"][kind]
        assert entry["mode"] == "failover" and entry["servers"] == [closed, resetting.target, address(good)]
        assert entry["fail"] == 0 and entry["ok"] >= 10
        # the first request went closed -> resetting -> good; the client then stuck to good
        assert entry["failovers"] == 2 and entry["ok_after_failover"] == 1, entry
        assert entry["targets"][address(good)]["ok"] == entry["ok"]
        assert entry["targets"][closed]["failovers"] == 1 and entry["targets"][closed]["ok"] == 0
        assert entry["targets"][resetting.target]["failovers"] == 1
        reasons = entry["failover_reasons"]
        assert sum(count for reason, count in reasons.items() if reason.startswith("server down: dial tcp: connect: connection refused")) == 1, reasons
        assert sum(count for reason, count in reasons.items() if reason.startswith("TLS handshake closed by peer")) == 1, reasons
        assert entry["failure_reasons"] == {}
    assert good.served(1, "old") + good.served(1, "current") == 40
    requests = check_consistent(out, summary)
    first = [req for req in requests if req["kind"] == "old"][0]
    assert first["tried"] == [closed, resetting.target, address(good)] and first["server"] == address(good) and first["ok"]
    assert all(req["tried"] == [address(good)] for req in requests if req["seq"] > 1)
    # the one-line summary does not fold failovers into "ok"
    # (the two clients share --max-requests: their split varies)
    assert re.search(r"old \d+ ok/0 fail \[2 failovers, 0 cert failures, 2 blips\]", result.stdout) and "4 failovers" in result.stdout
    # two blips per client (a dead and a resetting server): the verdict allows them only for two restarts
    assert summary["verdict"]["ok"] is False and "more than the 0 server restarts" in result.stdout
    assert probe("run", "--targets", "%s,%s,%s" % (closed, resetting.target, address(good)), "--old-ca", pki["old"][0],
                 "--current-ca-file", pki["old"][0], "--max-requests", "4", "--restarts", "2", "--out", out + "-2",
                 "--fail-on", "old,current").returncode == 0


def test_failover_all_servers_down_fails(pki, raw_listener, tmp_path):
    closed = ["127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()]
    resetting = raw_listener("reset")
    targets = closed + [resetting.target]
    out = str(tmp_path / "probe")
    started = time.monotonic()
    result = probe("run", "--targets", ",".join(targets), "--old-ca", pki["old"][0], "--current-ca-file", pki["old"][0],
                   "--interval", "0.02", "--max-requests", "10", "--duration", "30", "--out", out, "--fail-on", "current")
    assert time.monotonic() - started < 20
    assert result.returncode == 1, result.stdout + result.stderr
    summary = read_summary(out)
    assert summary["requests"] == 10 and summary["failures"] == 10 and summary["ok"] == 0
    for kind in ("old", "current"):
        entry = summary["kinds"][kind]
        # each failed request tried every server once: 2 failovers, failed at the last one
        assert entry["failovers"] == 2 * entry["fail"] and entry["ok_after_failover"] == 0
        # the resetting listener is last in the list; its reset comes in the TLS handshake
        assert [r.split("; last: ")[0] for r in entry["failure_reasons"]] == ["no server answered"], entry["failure_reasons"]
        assert all("TLS handshake closed by peer" in r for r in entry["failure_reasons"]), entry["failure_reasons"]
        # one run of failures: one blip per client
        assert entry["blips"] == entry["max_client_blips"] == entry["failovers"] + 1, entry
        assert "no server answered (3 tried)" in entry["targets"][resetting.target]["last_error"]
    requests = check_consistent(out, summary)
    assert all(sorted(req["tried"]) == sorted(targets) and not req["ok"] for req in requests)
    assert "failure reasons: old " in result.stdout and "no server answered" in result.stdout


def test_certificate_failure_is_never_failed_over(pki, servers, tmp_path):
    """A server whose certificate does not verify comes first, a good one second: every request fails there."""
    bad = servers(pki["leaf_other"])
    good = servers(pki["leaf_old"])
    out = str(tmp_path / "probe")
    result = probe("run", "--targets", "%s,%s" % (address(bad), address(good)), "--old-ca", pki["old"][0], "--current-ca-file", pki["old"][0],
                   *client_args(pki), "--interval", "0.02", "--max-requests", "12", "--duration", "30", "--out", out, "--fail-on", "old")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = read_summary(out)
    assert summary["failures"] == 12 and summary["failovers"] == 0
    for kind in ("old", "current"):
        entry = summary["kinds"][kind]
        assert entry["fail"] >= 5 and entry["ok"] == 0 and entry["failovers"] == 0
        assert entry["targets"][address(bad)]["fail"] == entry["fail"]
        assert all("x509: certificate signed by unknown authority" in reason for reason in entry["failure_reasons"]), entry
        assert entry["cert_failures"] == entry["fail"] and entry["blips"] == 0, entry
    assert good.served(1, "old") + good.served(1, "current") == 0
    assert all(req["tried"] == [address(bad)] for req in check_consistent(out, summary))
    assert "x509: certificate signed by unknown authority" in result.stdout and "6 certificate failures" in result.stdout


def test_http_503_and_handshake_timeout_are_not_failed_over(pki, servers, raw_listener, tmp_path):
    """An answer (503 of a server shutting down) is not a dial error; neither is a server that accepts TCP but never
    does TLS (the dial worked): both count as failed, bounded by --timeout, and the next server is not asked."""
    stopping = servers(pki["leaf_old"])
    stopping.answer = (503, b"[-]shutdown failed: reason withheld\nreadyz check failed\n")
    good = servers(pki["leaf_old"])
    out = str(tmp_path / "probe")
    result = probe("run", "--targets", "%s,%s" % (address(stopping), address(good)), "--old-ca", pki["old"][0], "--current-ca-file",
                   pki["old"][0], *client_args(pki), "--interval", "0.02", "--max-requests", "6", "--duration", "30", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(out)
    assert summary["failures"] == 6 and summary["failovers"] == 0
    assert set(summary["kinds"]["old"]["failure_reasons"]) == {"HTTP 503: [-]shutdown failed: reason withheld\nreadyz check failed"}
    assert summary["cert_failures"] == 0 and all(entry["blips"] == 1 for entry in summary["kinds"].values())
    assert good.served(1, "old") + good.served(1, "current") == 0
    check_consistent(out, summary)

    silent = raw_listener("silent")
    out = str(tmp_path / "probe-silent")
    started = time.monotonic()
    result = probe("run", "--targets", "%s,%s" % (silent.target, address(good)), "--old-ca", pki["old"][0], "--current-ca-file", pki["old"][0],
                   *client_args(pki), "--timeout", "0.5", "--interval", "0", "--max-requests", "4", "--duration", "30", "--out", out)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(out)
    assert summary["failures"] == 4 and summary["failovers"] == 0
    for entry in summary["kinds"].values():
        assert all("i/o timeout" in reason for reason in entry["failure_reasons"]), entry
    assert took < 15
    assert good.served(1, "old") + good.served(1, "current") == 0


def test_rolling_restart_of_the_servers_fails_nothing(pki, servers, tmp_path):
    """Three servers restart one at a time (listener closed with connections queued, down for a while, back on the
    same port) under traffic: no request fails, and the clients moved between servers (failovers counted)."""
    leaf = pki["leaf_old"]
    running = [servers(leaf), servers(leaf), servers(leaf)]
    ports = [httpd.server_address[1] for httpd in running]
    targets = ["127.0.0.1:%d" % port for port in ports]
    out = str(tmp_path / "probe")
    result = probe("start", "--targets", ",".join(targets), "--old-ca", pki["old"][0], "--current-ca-file", pki["old"][0], *client_args(pki),
                   "--interval", "0.01", "--duration", "60", "--restarts", "3", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        for index in range(3):
            served_before = sum(httpd.served(1, "old") for httpd in running)
            wait_for(lambda: sum(httpd.served(1, "old") for httpd in running) >= served_before + 5, 15, "traffic before restart %d" % index)
            running[index].shutdown()
            running[index].server_close()
            time.sleep(0.6)
            running[index] = servers(leaf, port=ports[index])
        wait_for(lambda: sum(httpd.served(1, "current") for httpd in running) >= 5, 15, "traffic after the restarts")
    finally:
        stopped = probe("stop", "--out", out, "--timeout", "20", "--fail-on", "old,current")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    summary = read_summary(out)
    assert summary["failures"] == 0 and summary["requests"] >= 30
    # three restarts, at most one failover each per client: the verdict with --restarts 3 holds
    assert summary["verdict"] == {"ok": True, "restarts": 3, "problems": {}}, summary["verdict"]
    for kind in ("old", "current"):
        entry = summary["kinds"][kind]
        # the sticky server of each client restarted once: it moved on at least once, each time with success
        assert entry["failovers"] >= 1 and entry["ok_after_failover"] >= 1, entry
        assert sum(1 for row in entry["targets"].values() if row["ok"]) >= 2, entry
    check_consistent(out, summary)


def test_pin_keeps_one_client_per_target(pki, servers, tmp_path):
    good = servers(pki["leaf_old"])
    closed = "127.0.0.1:%d" % free_port()
    out = str(tmp_path / "probe")
    result = probe("run", "--pin", "--targets", "%s,%s" % (closed, address(good)), "--old-ca", pki["old"][0], "--current-ca-file",
                   pki["old"][0], "--interval", "0.02", "--max-requests", "20", "--duration", "30", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(out)
    assert summary["settings"]["pin"] is True and summary["failovers"] == 0
    for kind in ("old", "current"):
        rows = summary["kinds"][kind]["targets"]
        assert summary["kinds"][kind]["mode"] == "pin"
        assert rows[closed]["ok"] == 0 and rows[closed]["fail"] >= 2 and rows[address(good)]["ok"] >= 2 and rows[address(good)]["fail"] == 0
        assert "connect: connection refused" in rows[closed]["last_error"]
    check_consistent(out, summary)


class Etcd:
    """A one-member etcd (Debian etcd-server) on 127.0.0.1 with client-certificate TLS; restartable on its data dir."""

    def __init__(self, pki, directory):
        certs = pki["pki"]
        self.dir = directory
        server_ca = certs.root("etcd-server-ca", "etcd-server-ca")
        self.cacert = server_ca[0]
        server = certs.issue("etcd-server", "etcd-server", server_ca, "both")
        self.cert, self.key = certs.issue("etcd-client", "etcd-client", server_ca, "client")
        self.url = "https://127.0.0.1:%d" % free_port()
        peer = "http://127.0.0.1:%d" % free_port()
        self.cmd = ["etcd", "--name", "probe", "--data-dir", os.path.join(directory, "etcd-data"), "--logger=zap", "--log-level=warn",
                    "--listen-client-urls", self.url, "--advertise-client-urls", self.url, "--listen-peer-urls", peer,
                    "--initial-advertise-peer-urls", peer, "--initial-cluster", "probe=%s" % peer,
                    "--cert-file", server[0], "--key-file", server[1], "--trusted-ca-file", self.cacert, "--client-cert-auth"]
        self.proc = None
        self.creds = ["--etcd-cacert", self.cacert, "--etcd-cert", self.cert, "--etcd-key", self.key]

    def etcdctl(self, *args):
        return subprocess.run(["etcdctl", "--endpoints=%s" % self.url, "--dial-timeout=2s", "--command-timeout=3s", "--cacert=%s" % self.cacert,
                               "--cert=%s" % self.cert, "--key=%s" % self.key] + list(args), check=False, capture_output=True, text=True,
                              timeout=15, env=dict(os.environ, ETCDCTL_API="3"))

    def start(self):
        with open(os.path.join(self.dir, "etcd.log"), "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)  # pylint: disable=consider-using-with
        wait_for(lambda: self.proc.poll() is not None or self.etcdctl("endpoint", "health").returncode == 0, 30, "etcd to become healthy")
        assert self.proc.poll() is None, read_text(os.path.join(self.dir, "etcd.log"))

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)

    def probe_keys(self):
        left = self.etcdctl("get", "--prefix", "/kubepki-probe/", "--keys-only")
        assert left.returncode == 0, left.stdout + left.stderr
        return [line for line in left.stdout.splitlines() if line.strip()]


@pytest.fixture
def etcd(pki, tmp_path):
    server = Etcd(pki, str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_etcd_acked_writes_are_read_back_and_a_wrong_ca_is_a_certificate_failure(etcd, pki, tmp_path):
    out = str(tmp_path / "probe")
    result = probe("run", "--etcd-endpoints", etcd.url, *etcd.creds, "--interval", "0.1", "--duration", "3", "--out", out, "--fail-on", "etcd")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(out)
    entry = summary["kinds"]["etcd"]
    writes = entry["writes"]
    assert entry["fail"] == 0 and entry["ok"] >= 3 and entry["mode"] == "etcdctl", entry
    assert writes == {"acked": entry["ok"], "lost": 0, "lost_keys": [], "failed": 0, "failed_written": 0, "failed_absent": 0,
                      "unresolved": 0, "unresolved_keys": [], "read_back": "ok"}, writes
    assert "old" not in summary["kinds"] and summary["verdict"]["ok"] is True
    assert "%d acked writes, 0 lost" % entry["ok"] in result.stdout
    # one key per put, acknowledged by the member (its id in requests.jsonl); the probe deletes its keys at exit
    requests = check_consistent(out, summary)
    assert len({req["key"] for req in requests}) == len(requests) and all(req["member"] for req in requests)
    assert etcd.probe_keys() == []
    # a CA that does not sign etcd's server certificate: certificate failures (from etcdctl's x509 error), flagged
    bad = probe("run", "--etcd-endpoints", etcd.url, "--etcd-cacert", pki["old"][0], "--etcd-cert", etcd.cert, "--etcd-key", etcd.key,
                "--max-requests", "2", "--timeout", "1", "--readback-timeout", "2", "--duration", "30", "--out", out, "--fail-on", "etcd")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    entry = read_summary(out)["kinds"]["etcd"]
    assert entry["ok"] == 0 and entry["fail"] == 2 and entry["cert_failures"] == 2, entry
    assert all("x509: certificate signed by unknown authority" in reason for reason in entry["failure_reasons"]), entry


def test_etcd_write_deleted_behind_the_probe_is_reported_lost(etcd, tmp_path):
    """The read-back is a real check: keys removed by someone else after their put was acknowledged count as lost."""
    out = str(tmp_path / "probe")
    result = probe("start", "--etcd-endpoints", etcd.url, *etcd.creds, "--interval", "0.1", "--duration", "30", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        wait_for(lambda: len(etcd.probe_keys()) >= 3, 20, "three acknowledged writes")
        deleted = etcd.probe_keys()[:2]
        for key in deleted:
            assert etcd.etcdctl("del", key).stdout.strip() == "1"
    finally:
        stopped = probe("stop", "--out", out, "--fail-on", "etcd")
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    writes = read_summary(out)["kinds"]["etcd"]["writes"]
    assert writes["lost"] == 2 and writes["lost_keys"] == sorted(deleted), writes
    assert "2 acknowledged writes lost" in stopped.stdout


def test_etcd_member_killed_and_restarted_under_the_probe(etcd, tmp_path):
    """The only member is killed (SIGKILL) and restarted on its data dir while the probe writes: the puts made while
    it was down fail, each is resolved (absent here, or written), no acknowledged write is lost, and the outage is
    one blip (within --restarts 1)."""
    out = str(tmp_path / "probe")
    result = probe("start", "--etcd-endpoints", etcd.url, *etcd.creds, "--interval", "0.1", "--timeout", "1", "--duration", "60",
                   "--restarts", "1", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        wait_for(lambda: len(etcd.probe_keys()) >= 3, 20, "writes before the kill")
        etcd.kill()
        wait_for(lambda: any(line["fail"] for line in read_jsonl(out)), 20, "failed puts while etcd is down")
        etcd.start()
        acked = len(etcd.probe_keys())
        wait_for(lambda: len(etcd.probe_keys()) >= acked + 3, 20, "writes after the restart")
    finally:
        stopped = probe("stop", "--out", out, "--fail-on", "etcd")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    entry = read_summary(out)["kinds"]["etcd"]
    writes = entry["writes"]
    assert writes["failed"] == entry["fail"] >= 1 and writes["failed_written"] + writes["failed_absent"] == writes["failed"], writes
    assert writes["lost"] == 0 and writes["unresolved"] == 0 and writes["read_back"] == "ok", writes
    assert writes["acked"] == entry["ok"] and entry["cert_failures"] == 0 and entry["blips"] == 1, entry
    assert etcd.probe_keys() == []


def test_missing_etcdctl_is_an_error(etcd, tmp_path):
    result = probe("run", "--etcd-endpoints", etcd.url, *etcd.creds, "--etcdctl", str(tmp_path / "no-etcdctl"), "--duration", "1",
                   "--out", str(tmp_path / "probe"))
    assert result.returncode == 2 and "Debian package etcd-client" in result.stderr, result.stderr
