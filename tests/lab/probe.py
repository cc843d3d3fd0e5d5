# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Traffic probe for the kubepki.certs lab: live traffic of REAL clients during a playbook run (CA rotation).

The verdicts come from real clients, never from this script's own TLS code (it has none):

``old``
    A Go TLS client (``tests/lab/tlsclient``: crypto/tls + crypto/x509, verifying like kubectl's client-go)
    holding only the pre-rotation CA (``--old-ca``) and the client certificate as they were at start (snapshots).
    GET ``--path`` (``/readyz`` with a client certificate, else ``/cacerts``). A cross-signed rotation must keep it
    working.
``current``
    The same Go client with ``--current-ca-file`` and ``--client-cert``/``--client-key`` as they are at each
    request: copy the rotated bundle there and it follows.
``etcd``
    Debian's ``etcdctl`` (clientv3, package etcd-client) given ALL ``--etcd-endpoints``: its own balancer and
    failover pick the member. Every put writes a new key (``<prefix><probe id>/<seq>``) and counts as
    acknowledged when etcdctl exits 0. A failed put is resolved at once by reading the key back (bounded
    retries): written or absent. At the end every acknowledged key is read back with etcdctl (lost = missing or
    another value), unresolved failed puts are resolved from the same read, and the probe's keys are deleted.

``old`` and ``current`` are each ONE client of the HA cluster, as behind k3s's client load balancer: it talks
to all targets, sticks to the server that answered last, and moves on to the next one within the same request
only when the Go client reports a connection-level failure (TCP dial failed, or the handshake closed by the
peer without a TLS alert: a server closing its listener). Certificate failures (this client refused the
server's certificate, or a TLS alert: the server refused ours) never fail over; nor does anything after the
handshake (an HTTP 503 is an answer). ``--pin`` makes one client per kind and target instead (no failover).

Verdict (``summary.json`` ``verdict``; ``--fail-on`` kinds make the exit code 1 when it flags them):
0 certificate failures; 0 acknowledged etcd writes lost; every failed etcd write resolved (written or absent);
availability blips (failovers + runs of consecutive failed requests) per client at most ``--restarts`` (the
server restarts expected during the run: at most one blip per restart and client).

Bounded: ``--duration``, ``--max-requests`` (all kinds together), ``<out>/stop``, SIGTERM/SIGINT; every client
process has ``--timeout`` (+ a grace to report); the final read-back ``--readback-timeout``. Traffic goes only to
loopback and ``--allow-net`` networks (the lab's 10.123.0.0/16 by default); names are resolved through
/etc/hosts only (no DNS). Output in ``--out`` DIR:

- ``probe.jsonl``: every second one line per kind and target
  ``{"t", "elapsed", "kind", "target", "ok", "fail", "failovers", "cert_failures", "last_error"}``
  (a request counts for the server that answered it, or failed for the last one tried; etcd: one row for the
  etcdctl client over all endpoints);
- ``requests.jsonl``: one line per request ``{"t", "elapsed", "kind", "seq", "ok", "server", "tried", "failovers",
  "stage", "error"}`` (etcd: ``server`` is the member id that acknowledged the put, ``key``, ``outcome`` of a failed put);
- ``summary.json`` at exit: per kind ok, fail, failovers, cert_failures, blips, failure/failover reasons, per target
  rows; etcd ``writes`` (acked, lost, failed, written/absent/unresolved, read_back); the verdict; a one-line
  summary is printed.

Needs ``etcdctl`` (Debian etcd-client) for etcd endpoints and ``go`` (Debian golang-go) to build the Go client once
(cached under ``~/.cache/kubepki-lab``; ``--tls-client BIN`` gives a built one). A missing tool: exit code 2.

Usage::

    python3 tests/lab/probe.py start --lab-state /tmp/lab/state.json --lab-etcd-port 2379 --restarts 3 \\
        --old-ca old-server-ca.crt --current-ca-file current.crt --client-cert client-admin.crt --client-key client-admin.key \\
        --etcd-cacert etcd/server-ca.crt --etcd-cert etcd/client.crt --etcd-key etcd/client.key --out /tmp/lab/probe
    python3 tests/lab/probe.py stop --out /tmp/lab/probe --fail-on old,current,etcd
    python3 tests/lab/probe.py summary --out /tmp/lab/probe

``run`` probes in the foreground. ``--lab-state BASE/state.json`` adds every server of a lab (``--lab-port``, 6443;
rke2 9345) and, with ``--lab-etcd-port 2379``, its etcd endpoint, and allows the lab's subnet. Exit codes: 0, 1
(``--fail-on`` kinds flagged by the verdict), 2 (bad arguments, files or missing tools: nothing probed), 3
(``stop``/``summary``: no summary). ``--netns NAME`` re-executes the probe under ``ip netns exec NAME``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TLS_CLIENT_SRC = os.path.join(HERE, "tlsclient")
KINDS = ("old", "current", "etcd")
DEFAULT_ALLOW = "127.0.0.0/8,::1/128,10.123.0.0/16"
STOP_FILE = "stop"
PID_FILE = "probe.pid"
LOG_FILE = "probe.log"
JSONL_FILE = "probe.jsonl"
REQUESTS_FILE = "requests.jsonl"
SUMMARY_FILE = "summary.json"
MAX_CA_CHANGES = 200
NETNS_ENV = "KUBEPKI_PROBE_NETNS"
MARKER = "kubepki-probe"
# Tool -> Debian package (scripts/bootstrap.sh installs them).
PACKAGES = {"etcdctl": "etcd-client", "go": "golang-go"}
# Stages of the Go client (tests/lab/tlsclient/main.go) after which a request moves on to the next server.
FAILOVER_STAGES = {"dial": "server down", "handshake-closed": "TLS handshake closed by peer"}
# Stages that are certificate failures: the verdict's first rule.
CERT_STAGES = ("certificate", "tls-alert")
# etcdctl (Go) prints these when a TLS handshake failed over a certificate, whatever its summary line says.
ETCD_CERT_MARKERS = ("x509: ", "remote error: tls: ")
GRACE = 3.0           # a client process gets --timeout plus this long to report before it is killed
MIN_ATTEMPT = 0.05    # the next server is not tried with less than this left of a request's --timeout
MIN_DIAL = 0.25       # a TCP connect gets at least this long (if the request has it left)
MAX_REASONS = 32      # distinct failure/failover reasons kept per kind (then "other")
RESOLVE_TRIES = 3     # reads of a failed put's key before it is left to the final read-back
MAX_LISTED = 20       # keys listed in the summary (lost, unresolved)


class ProbeError(Exception):
    """Bad arguments, unusable input files or a missing tool (exit code 2)."""


class AttemptFailed(Exception):
    """One attempt of a real client failed at ``stage`` (see tests/lab/tlsclient/main.go) with ``error``."""

    def __init__(self, stage, error):
        super().__init__(error)
        self.stage = stage
        self.error = error


class RequestFailed(Exception):
    """A logical request failed: ``error`` (full text), ``reason`` (short, counted) and the client's ``stage``."""

    def __init__(self, error, reason, stage=None):
        super().__init__(error)
        self.error = error
        self.reason = reason
        self.stage = stage


# ---------------------------------------------------------------------------------------------
# helpers


def now_iso(when=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if when is None else when))


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def write_json(path, data):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def error_text(exc):
    text = str(exc) or exc.__class__.__name__
    return ("%s: %s" % (exc.__class__.__name__, text))[:500]


def reason_of(text):
    """A short, countable form of an error text (no server address: one reason for a failure on any server)."""
    text = re.sub(r"\b(dial|read|write) tcp [^ ]+: ", r"\1 tcp: ", text or "")  # one reason for every server and port
    return text[:160]


def split_list(text):
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def hosts_file_lookup(name, path="/etc/hosts"):
    """Addresses of ``name`` in the hosts file (no DNS: the probe must not send traffic off the lab)."""
    found = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and name in fields[1:]:
                    found.append(fields[0])
    except OSError:
        pass
    return found


def parse_hostport(text, default_port=None):
    """``host:port``, ``[v6]:port`` or ``https://host:port`` -> (host, port)."""
    rest = text.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme != "https":
            raise ProbeError("only https:// URLs are probed: %r" % text)
        rest = rest.split("/", 1)[0]
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]")
        port = port[1:] if port.startswith(":") else ""
        if not sep:
            raise ProbeError("bad address %r" % text)
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, ""
    if not port:
        if default_port is None:
            raise ProbeError("%r needs a port (host:port)" % text)
        port = default_port
    try:
        port = int(port)
    except ValueError as exc:
        raise ProbeError("bad port in %r" % text) from exc
    if not host or not 0 < port < 65536:
        raise ProbeError("bad address %r" % text)
    return host, port


def lab_endpoints(path, port, etcd_port):
    """Targets and etcd URLs of the servers of a lab (tests/lab/kubepki_lab.py state.json), and its subnet."""
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        servers = [host["address"] for host in state["hosts"] if host.get("group") == "servers"]
        subnet = ipaddress.ip_network(state["subnet"], strict=False) if state.get("subnet") else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProbeError("cannot read the lab state %s: %s" % (path, error_text(exc))) from exc
    if not servers:
        raise ProbeError("the lab state %s lists no servers" % path)
    targets = ["%s:%d" % (address, port) for address in servers] if port else []
    etcd = ["https://%s:%d" % (address, etcd_port) for address in servers] if etcd_port else []
    return targets, etcd, subnet


class Endpoint:
    """A checked destination: the address connected to and the name TLS verifies."""

    def __init__(self, label, host, port, allow):
        self.label = label
        self.host = host
        self.port = port
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            candidates = hosts_file_lookup(host)
            if not candidates:
                raise ProbeError("%s: %r is neither an IP address nor a name in /etc/hosts (the probe does no DNS)" % (label, host)) from None
            address = ipaddress.ip_address(candidates[0])
        if not any(address in net for net in allow):
            raise ProbeError("%s: %s is outside the allowed networks %s (see --allow-net)" % (label, address, ",".join(str(net) for net in allow)))
        self.address = str(address)


# ---------------------------------------------------------------------------------------------
# the real clients


def find_tool(name, given=None):
    """Path of ``given`` or of ``name`` on PATH; ProbeError naming the Debian package when missing."""
    path = given if given and os.path.sep in given else shutil.which(given or name)
    if not path or not os.access(path, os.X_OK):
        raise ProbeError("needs %s (Debian package %s; scripts/bootstrap.sh installs it)" % (given or name, PACKAGES.get(name, name)))
    return path


def tls_client_binary(given=None):
    """The Go client: ``given``, else built from tests/lab/tlsclient once per source and Go version (cached)."""
    if given:
        return find_tool("labclient", given)
    go = find_tool("go")
    env = dict(os.environ, GOPROXY="off", GOFLAGS="", GOTOOLCHAIN="local", CGO_ENABLED="0", GO111MODULE="on")
    try:
        version = subprocess.run([go, "env", "GOVERSION"], check=True, capture_output=True, text=True, timeout=60, env=env).stdout.strip()
        digest = hashlib.sha256(version.encode())
        for name in ("go.mod", "main.go"):
            digest.update(read_bytes(os.path.join(TLS_CLIENT_SRC, name)))
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProbeError("cannot read the Go client's source or go's version: %s" % error_text(exc)) from exc
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kubepki-lab")
    binary = os.path.join(cache, "labclient-%s" % digest.hexdigest()[:16])
    if os.access(binary, os.X_OK):
        return binary
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".labclient-", dir=cache)
    try:
        result = subprocess.run([go, "build", "-o", os.path.join(tmp, "labclient"), "."], cwd=TLS_CLIENT_SRC, check=False,
                                capture_output=True, text=True, timeout=600, env=env)
        if result.returncode != 0:
            raise ProbeError("go build of %s failed:\n%s%s" % (TLS_CLIENT_SRC, result.stdout[-2000:], result.stderr[-2000:]))
        os.replace(os.path.join(tmp, "labclient"), binary)
    except subprocess.TimeoutExpired as exc:
        raise ProbeError("go build of %s took over 600 s" % TLS_CLIENT_SRC) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return binary


def https_get(binary, url, ca, cert, key, server_name, user_agent, deadline, dial_deadline):
    """One GET through the Go client (a new process, a new connection). Returns its answer; raises AttemptFailed."""
    left = deadline - time.monotonic()
    cmd = [binary, "get", "--ca", ca, "--user-agent", user_agent, "--timeout", "%dms" % max(1, left * 1000),
           "--dial-timeout", "%dms" % max(1, (min(deadline, dial_deadline) - time.monotonic()) * 1000)]
    if cert:
        cmd += ["--cert", cert, "--key", key]
    if server_name:
        cmd += ["--server-name", server_name]
    try:
        result = subprocess.run(cmd + [url], check=False, capture_output=True, text=True, timeout=max(0.1, left) + GRACE)
    except subprocess.TimeoutExpired as exc:
        raise AttemptFailed("client", "the Go client did not report within %.1fs" % (left + GRACE)) from exc
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise AttemptFailed("client", "the Go client exited %d without an answer: %s" % (result.returncode, result.stderr[-300:])) from exc
    if answer.get("stage") == "setup":
        raise ProbeError("Go client: %s" % answer.get("error"))
    if not answer.get("ok"):
        raise AttemptFailed(answer.get("stage") or "client", answer.get("error") or "exit code %d" % result.returncode)
    return answer


class Etcdctl:
    """Debian's etcdctl (clientv3) with ALL endpoints: its balancer and failover choose the member."""

    def __init__(self, binary, endpoints, cacert, cert, key, timeout):
        self.binary = binary
        self.endpoints = ",".join(endpoints)
        self.tls = ["--cacert=%s" % cacert, "--cert=%s" % cert, "--key=%s" % key]
        self.timeout = timeout

    def call(self, *args, timeout=None):
        """etcdctl ``args`` -w json; the parsed answer, or AttemptFailed(stage certificate|etcdctl, last line)."""
        timeout = timeout or self.timeout
        millis = max(200, int(timeout * 1000))
        # --debug: grpc's log names the x509 error of a refused handshake, which the summary line hides
        # ("context deadline exceeded")
        cmd = [self.binary, "--endpoints=%s" % self.endpoints, "--dial-timeout=%dms" % millis, "--command-timeout=%dms" % millis,
               "--debug", "-w", "json"] + self.tls + list(args)
        try:
            result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=2 * timeout + GRACE,
                                    env=dict(os.environ, ETCDCTL_API="3"))
        except subprocess.TimeoutExpired as exc:
            raise AttemptFailed("etcdctl", "etcdctl %s did not finish within %.1fs" % (args[0], 2 * timeout + GRACE)) from exc
        if result.returncode != 0:
            text = result.stderr + result.stdout
            # etcdctl prints its retries' warnings and grpc's log first; the last line is the "Error: ..." summary
            lines = [line for line in text.splitlines() if line.strip()]
            last = lines[-1][:300] if lines else "exit code %d" % result.returncode
            cert = next((m for m in ETCD_CERT_MARKERS if m in text), None)
            if cert:
                cause = text[text.index(cert):].split('"', 1)[0].split("\n", 1)[0][:200]
                raise AttemptFailed("certificate", "etcdctl %s: %s (%s)" % (args[0], last, cause.rstrip("\\")))
            raise AttemptFailed("etcdctl", "etcdctl %s: %s" % (args[0], last))
        try:
            return json.loads(result.stdout)
        except ValueError as exc:
            raise AttemptFailed("etcdctl", "etcdctl %s: no JSON answer: %r" % (args[0], result.stdout[:200])) from exc

    def put(self, key, value):
        """The id (hex) of the member that acknowledged the put."""
        member = (self.call("put", key, value).get("header") or {}).get("member_id")
        return "%x" % member if isinstance(member, int) else None

    def values(self, key, prefix=False, timeout=None):
        """{key: value} read with a linearizable get (of ``key``, or of every key under it)."""
        answer = self.call(*(["get", key] + (["--prefix"] if prefix else [])), timeout=timeout)
        return {base64.b64decode(kv["key"]).decode("utf-8", "replace"): base64.b64decode(kv.get("value", "")).decode("utf-8", "replace")
                for kv in answer.get("kvs") or []}

    def delete_prefix(self, prefix):
        self.call("del", "--prefix", prefix)


# ---------------------------------------------------------------------------------------------
# one logical HTTPS client over several servers (k3s's client load balancer)


class Trace:
    """What one logical request did: servers tried in order, failovers (server, reason, error), who answered."""

    def __init__(self):
        self.tried = []
        self.failovers = []
        self.server = None
        self.stage = None
        self.extra = {}


class Pool:
    """The server list of one logical client: sticks to the server that last answered, moves on after a
    connection-level failure (FAILOVER_STAGES), each server at most once per request, all within ``timeout``.
    When no server answers, the sticky server stays as it was."""

    def __init__(self, endpoints):
        self.endpoints = list(endpoints)
        self.current = 0

    def call(self, attempt, timeout, trace):
        """``attempt(endpoint, deadline, dial_deadline)`` on the servers in turn; its result, or RequestFailed."""
        deadline = time.monotonic() + timeout
        count = len(self.endpoints)
        start = self.current
        pending = None
        for step in range(count):
            index = (start + step) % count
            endpoint = self.endpoints[index]
            left = deadline - time.monotonic()
            if pending is not None:
                if left < MIN_ATTEMPT:
                    raise RequestFailed("request timeout (%.1fs) after %d of %d servers; last: %s" % (timeout, step, count, pending[2]),
                                        "request timeout during failover; last: %s: %s" % (pending[1], reason_of(pending[2])), "timeout")
                trace.failovers.append(pending)
            dial_deadline = time.monotonic() + max(min(left, MIN_DIAL), left / (count - step))
            trace.tried.append(endpoint.label)
            try:
                result = attempt(endpoint, deadline, dial_deadline)
            except AttemptFailed as exc:
                why = FAILOVER_STAGES.get(exc.stage)
                if why is None:
                    raise RequestFailed(exc.error, reason_of(exc.error), exc.stage) from exc
                pending = (endpoint.label, why, exc.error)
                continue
            self.current = index
            trace.server = endpoint.label
            return result
        if count == 1:
            raise RequestFailed(pending[2], "%s: %s" % (pending[1], reason_of(pending[2])), "dial")
        raise RequestFailed("no server answered (%d tried): %s" % (count, pending[2]),
                            "no server answered; last: %s: %s" % (pending[1], reason_of(pending[2])), "dial")


class Client:
    """One logical client of one kind: all its servers behind a Pool (HTTPS), or etcdctl over all endpoints."""

    def __init__(self, kind, endpoints, label=None):
        self.kind = kind
        self.pool = Pool(endpoints)
        self.label = label
        self.name = "%s-%s" % (kind, "+".join(endpoint.label for endpoint in endpoints))

    @property
    def labels(self):
        return [self.label] if self.label else [endpoint.label for endpoint in self.pool.endpoints]


# ---------------------------------------------------------------------------------------------
# bookkeeping


def _row():
    return {"ok": 0, "fail": 0, "failovers": 0, "cert_failures": 0, "first_failure": None, "last_failure": None, "last_ok": None,
            "last_error": None, "last_failover": None}


def _window():
    return {"ok": 0, "fail": 0, "failovers": 0, "cert_failures": 0, "last_error": None}


def _count(table, reason):
    if reason not in table and len(table) >= MAX_REASONS:
        reason = "other"
    table[reason] = table.get(reason, 0) + 1


class Stats:
    """Totals per kind and per (kind, target), per-second windows, one record per request, and the blips.

    A request counts once: ``ok`` for the server that answered, or ``fail`` for the last server tried.
    ``failovers`` of a server counts the times a request left it for the next one. A blip is a failover or a
    run of consecutive failed requests of one client (the next success ends the run).
    """

    def __init__(self, start_wall, start_mono):
        self.lock = threading.Lock()
        self.start_wall = start_wall
        self.start_mono = start_mono
        self.totals = {}
        self.window = {}
        self.order = []
        self.kinds = {}
        self.failing = {}
        self.requests = []

    def add_key(self, kind, target):
        key = (kind, target)
        if key in self.totals:
            return
        self.order.append(key)
        self.totals[key] = _row()
        self.window[key] = _window()

    def add_client(self, client, mode):
        for label in client.labels:
            self.add_key(client.kind, label)
        self.kinds.setdefault(client.kind, {"mode": mode, "servers": [], "failovers": 0, "ok_after_failover": 0, "failure_reasons": {},
                                            "failover_reasons": {}, "cert_failures": 0, "blips": 0, "max_client_blips": 0})
        for label in client.labels:
            if label not in self.kinds[client.kind]["servers"]:
                self.kinds[client.kind]["servers"].append(label)

    def stamp(self):
        elapsed = time.monotonic() - self.start_mono
        return {"t": round(self.start_wall + elapsed, 3), "elapsed": round(elapsed, 3)}

    def record(self, client, target, error=None, trace=None, reason=None, seq=None):
        """One finished request of ``client``: answered by ``target`` (error None) or failed there."""
        kind = client.kind
        stamp = self.stamp()
        failovers = trace.failovers if trace else []
        cert = error is not None and trace is not None and trace.stage in CERT_STAGES
        with self.lock:
            self.add_key(kind, target)
            total, window = self.totals[(kind, target)], self.window[(kind, target)]
            entry = self.kinds[kind]
            blips = len(failovers)
            for label, why, text in failovers:
                row, win = self.totals[(kind, label)], self.window[(kind, label)]
                row["failovers"] += 1
                win["failovers"] += 1
                row["last_failover"] = dict(stamp, error=text)
                entry["failovers"] += 1
                _count(entry["failover_reasons"], "%s: %s" % (why, reason_of(text)))
            if error is None:
                self.failing[client.name] = False
                total["ok"] += 1
                window["ok"] += 1
                total["last_ok"] = stamp
                if failovers:
                    entry["ok_after_failover"] += 1
            else:
                if not cert and not self.failing.get(client.name):
                    blips += 1
                self.failing[client.name] = not cert
                total["fail"] += 1
                window["fail"] += 1
                window["last_error"] = error
                total["last_error"] = error
                if cert:
                    total["cert_failures"] += 1
                    window["cert_failures"] += 1
                    entry["cert_failures"] += 1
                failure = dict(stamp, error=error)
                if total["first_failure"] is None:
                    total["first_failure"] = failure
                total["last_failure"] = failure
                _count(entry["failure_reasons"], reason or reason_of(error))
            entry["blips"] += blips
            per_client = entry.setdefault("client_blips", {})
            per_client[client.name] = per_client.get(client.name, 0) + blips
            entry["max_client_blips"] = max(entry["max_client_blips"], per_client[client.name])
            line = dict(stamp, kind=kind, seq=seq, ok=error is None, server=target if error is None else None,
                        tried=list(trace.tried) if trace else [target], failovers=len(failovers), stage=trace.stage if trace else None,
                        error=error)
            if trace is not None:
                line.update(trace.extra)
            self.requests.append(line)

    def flush(self, handle, elapsed, requests_handle=None):
        with self.lock:
            lines = []
            for key in self.order:
                window = self.window[key]
                lines.append(dict({"t": round(self.start_wall + elapsed, 3), "elapsed": round(elapsed, 3), "kind": key[0], "target": key[1]},
                                  **window))
                self.window[key] = _window()
            requests, self.requests = self.requests, []
        for line in lines:
            handle.write(json.dumps(line, sort_keys=True) + "\n")
        handle.flush()
        if requests_handle is not None:
            for line in requests:
                requests_handle.write(json.dumps(line, sort_keys=True) + "\n")
            requests_handle.flush()


class Budget:
    """Shared request counter and stop flag (the first stop reason wins)."""

    def __init__(self, max_requests):
        self.max_requests = max_requests
        self.lock = threading.Lock()
        self.used = 0
        self.stop = threading.Event()
        self.reason = None

    def halt(self, reason):
        with self.lock:
            if self.reason is None:
                self.reason = reason
        self.stop.set()

    def take(self):
        with self.lock:
            if self.stop.is_set():
                return False
            if self.used >= self.max_requests:
                if self.reason is None:
                    self.reason = "max-requests"
                self.stop.set()
                return False
            self.used += 1
            if self.used >= self.max_requests:
                if self.reason is None:
                    self.reason = "max-requests"
                # this last request still runs; workers see the flag before their next one
                self.stop.set()
            return True


class Ledger:
    """The etcd writes: acknowledged {key: value}, failed puts with their outcome (written, absent, unresolved)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}
        self.failed = {}
        self.read_back = None
        self.lost = []

    def summary(self):
        with self.lock:
            outcomes = [entry["outcome"] for entry in self.failed.values()]
            unresolved = sorted(key for key, entry in self.failed.items() if entry["outcome"] == "unresolved")
            return {"acked": len(self.acked), "lost": len(self.lost), "lost_keys": self.lost[:MAX_LISTED], "failed": len(self.failed),
                    "failed_written": outcomes.count("written"), "failed_absent": outcomes.count("absent"),
                    "unresolved": len(unresolved), "unresolved_keys": unresolved[:MAX_LISTED], "read_back": self.read_back}


def remove_snapshot(out):
    shutil.rmtree(os.path.join(os.path.abspath(out), ".old-client"), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the probe


class Probe:
    def __init__(self, args):
        self.args = args
        self.allow = [ipaddress.ip_network(net, strict=False) for net in split_list(args.allow_net)]
        self.timeout = args.timeout
        targets, etcd = split_list(args.targets), split_list(args.etcd_endpoints)
        if args.lab_state:
            lab_targets, lab_etcd, subnet = lab_endpoints(args.lab_state, args.lab_port, args.lab_etcd_port)
            targets += [item for item in lab_targets if item not in targets]
            etcd += [item for item in lab_etcd if item not in etcd]
            if subnet:
                self.allow.append(subnet)
        self.targets = [Endpoint("target %s" % text, *parse_hostport(text), allow=self.allow) for text in targets]
        self.etcd = [Endpoint("etcd endpoint %s" % text, *parse_hostport(text, default_port=2379), allow=self.allow) for text in etcd]
        if not self.targets and not self.etcd:
            raise ProbeError("nothing to probe: give --targets and/or --etcd-endpoints")
        if self.targets and not (args.old_ca and args.current_ca_file):
            raise ProbeError("--targets needs --old-ca and --current-ca-file")
        if bool(args.client_cert) != bool(args.client_key):
            raise ProbeError("--client-cert and --client-key go together")
        if self.etcd and not (args.etcd_cacert and args.etcd_cert and args.etcd_key):
            raise ProbeError("--etcd-endpoints needs --etcd-cacert, --etcd-cert and --etcd-key")
        self.path = args.path or ("/readyz" if args.client_cert else "/cacerts")
        self.ca_changes = []
        self.ca_digest = None
        self.old_ca_sha256 = None
        self.snapshot = None
        self.tls_client = None
        self.etcdctl = None
        self.ledger = Ledger()
        if self.targets:
            for path in (args.old_ca, args.current_ca_file, args.client_cert, args.client_key):
                if path and not os.path.isfile(path):
                    raise ProbeError("cannot read %s" % path)
            self.tls_client = tls_client_binary(args.tls_client)
            self.snapshot = self.snapshot_old_client(args)
            self.old_ca_sha256 = hashlib.sha256(read_bytes(self.snapshot[0])).hexdigest()
            self.check_client("old", self.snapshot[0], self.snapshot[1], self.snapshot[2])
            self.check_client("current", args.current_ca_file, args.client_cert, args.client_key)
            self.current_ca_digest()
        if self.etcd:
            for path in (args.etcd_cacert, args.etcd_cert, args.etcd_key):
                if not os.path.isfile(path):
                    raise ProbeError("cannot read %s" % path)
            urls = ["https://%s:%d" % (e.host if ":" not in e.host else "[%s]" % e.host, e.port) for e in self.etcd]
            self.etcdctl = Etcdctl(find_tool("etcdctl", args.etcdctl), urls, args.etcd_cacert, args.etcd_cert, args.etcd_key, self.timeout)
        self.probe_id = "%s-%d-%s" % (socket.gethostname(), os.getpid(), secrets.token_hex(3))
        self.prefix = "%s%s/" % (args.etcd_prefix, self.probe_id)
        self.stats = None
        self.clients = []
        self.budget = Budget(args.max_requests)

    def snapshot_old_client(self, args):
        """The old client keeps the CA and client certificate it had at start: private copies, removed at exit."""
        directory = os.path.join(os.path.abspath(args.out), ".old-client")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        paths = []
        for source, name in ((args.old_ca, "ca.crt"), (args.client_cert, "client.crt"), (args.client_key, "client.key")):
            if not source:
                paths.append(None)
                continue
            target = os.path.join(directory, name)
            with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
                handle.write(read_bytes(source))
            paths.append(target)
        return paths

    def check_client(self, kind, ca, cert, key):
        """Bad files are a usage error (exit 2), found before any traffic: the Go client's setup stage on a closed port."""
        try:
            https_get(self.tls_client, "https://127.0.0.1:9/", ca, cert, key, None, MARKER, time.monotonic() + 2, time.monotonic() + 0.2)
        except AttemptFailed:
            pass
        except ProbeError as exc:
            raise ProbeError("cannot load the %s client's CA or certificate: %s" % (kind, exc)) from exc

    def cleanup(self):
        remove_snapshot(self.args.out)

    def current_ca_digest(self):
        """Record a change of the current client's files (hash compared before each request; bounded list)."""
        sha = hashlib.sha256()
        for path in (self.args.current_ca_file, self.args.client_cert, self.args.client_key):
            if path:
                try:
                    sha.update(read_bytes(path))
                except OSError:
                    sha.update(b"<unreadable>")
                sha.update(b"\0")
        digest = sha.hexdigest()
        if digest != self.ca_digest and len(self.ca_changes) < MAX_CA_CHANGES:
            self.ca_changes.append({"t": round(time.time(), 3), "file": self.args.current_ca_file, "files_sha256": digest,
                                    "initial": self.ca_digest is None})
        self.ca_digest = digest

    def https_once(self, client, trace, kind):
        if kind == "old":
            ca, cert, key = self.snapshot
        else:
            self.current_ca_digest()
            ca, cert, key = self.args.current_ca_file, self.args.client_cert, self.args.client_key

        def attempt(endpoint, deadline, dial_deadline):
            host = endpoint.address if ":" not in endpoint.address else "[%s]" % endpoint.address
            url = "https://%s:%d%s" % (host, endpoint.port, self.path)
            return https_get(self.tls_client, url, ca, cert, key, self.args.server_name or endpoint.host, "%s/%s" % (MARKER, kind),
                             deadline, dial_deadline)
        client.pool.call(attempt, self.timeout, trace)

    def etcd_once(self, client, trace, seq):
        """A put of a new key; on failure the key is read back at once (bounded): written or absent."""
        key = "%s%06d" % (self.prefix, seq)
        value = "%d %s" % (seq, now_iso())
        trace.tried.append(client.labels[0])
        trace.extra["key"] = key
        try:
            trace.server = self.etcdctl.put(key, value) or client.labels[0]
        except AttemptFailed as exc:
            trace.stage = exc.stage
            outcome = self.resolve(key, value)
            trace.extra["outcome"] = outcome
            with self.ledger.lock:
                self.ledger.failed[key] = {"value": value, "outcome": outcome, "error": exc.error}
            raise RequestFailed(exc.error, reason_of(exc.error), exc.stage) from exc
        with self.ledger.lock:
            self.ledger.acked[key] = value

    def resolve(self, key, value):
        for attempt in range(RESOLVE_TRIES):
            if attempt:
                time.sleep(0.5)
            try:
                found = self.etcdctl.values(key)
            except AttemptFailed:
                continue
            return "written" if found.get(key) == value else "absent"
        return "unresolved"

    def read_back(self):
        """Every acknowledged key read back with etcdctl (retried within --readback-timeout); unresolved failed
        puts resolved from the same read; then the probe's keys are deleted."""
        deadline = time.monotonic() + self.args.readback_timeout
        found, error = None, None
        while found is None and time.monotonic() < deadline:
            try:
                found = self.etcdctl.values(self.prefix, prefix=True, timeout=max(self.timeout, 5.0))
            except AttemptFailed as exc:
                error = exc.error
                time.sleep(1)
        with self.ledger.lock:
            if found is None:
                self.ledger.read_back = "failed: %s" % error
                return
            self.ledger.read_back = "ok"
            self.ledger.lost = sorted(key for key, value in self.ledger.acked.items() if found.get(key) != value)
            for key, entry in self.ledger.failed.items():
                if entry["outcome"] == "unresolved":
                    entry["outcome"] = "written" if found.get(key) == entry["value"] else "absent"
        try:
            self.etcdctl.delete_prefix(self.prefix)
        except AttemptFailed:
            pass

    def worker(self, client):
        seq = 0
        while not self.budget.stop.is_set():
            if not self.budget.take():
                break
            seq += 1
            trace = Trace()
            err = reason = None
            try:
                if client.kind == "etcd":
                    self.etcd_once(client, trace, seq)
                else:
                    self.https_once(client, trace, client.kind)
            except RequestFailed as exc:
                err, reason, trace.stage = exc.error, exc.reason, exc.stage
            except (OSError, subprocess.SubprocessError, ValueError, ProbeError) as exc:
                err = error_text(exc)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                err = "unexpected " + error_text(exc)
            if client.kind == "etcd":
                target = client.labels[0]
                if err is None:
                    trace.extra["member"] = trace.server
            elif err is None:
                target = trace.server
            else:
                target = trace.tried[-1] if trace.tried else client.labels[client.pool.current]
            self.stats.record(client, target, err, trace=trace, reason=reason, seq=seq)
            self.budget.stop.wait(self.args.interval)

    def make_clients(self):
        """One logical client per kind over all its servers; with --pin one per HTTPS kind and server."""
        for endpoint in self.targets:
            endpoint.label = "%s:%d" % (endpoint.host, endpoint.port)
        for endpoint in self.etcd:
            endpoint.label = "https://%s:%d" % (endpoint.host, endpoint.port)
        clients = []
        if self.args.pin:
            for endpoint in self.targets:
                clients += [Client("old", [endpoint]), Client("current", [endpoint])]
        elif self.targets:
            clients += [Client("old", self.targets), Client("current", self.targets)]
        if self.etcd:
            clients.append(Client("etcd", self.etcd, label="etcdctl " + ",".join(e.label for e in self.etcd)))
        return clients

    def run(self, out):
        start_wall, start_mono = time.time(), time.monotonic()
        self.stats = Stats(start_wall, start_mono)
        self.clients = self.make_clients()
        for client in self.clients:
            self.stats.add_client(client, "etcdctl" if client.kind == "etcd" else ("pin" if self.args.pin else "failover"))
        stop_file = os.path.join(out, STOP_FILE)
        threads = [threading.Thread(target=self.worker, args=(client,), name="probe-%s" % client.name, daemon=True) for client in self.clients]
        with open(os.path.join(out, JSONL_FILE), "w", encoding="utf-8") as jsonl, \
                open(os.path.join(out, REQUESTS_FILE), "w", encoding="utf-8") as requests_log:
            for thread in threads:
                thread.start()
            next_flush = 1.0
            while True:
                elapsed = time.monotonic() - start_mono
                if elapsed >= next_flush:
                    self.stats.flush(jsonl, next_flush, requests_log)
                    next_flush += 1.0
                if self.budget.stop.is_set():
                    break
                if elapsed >= self.args.duration:
                    self.budget.halt("duration")
                    break
                if os.path.exists(stop_file):
                    self.budget.halt("stop-file")
                    break
                self.budget.stop.wait(min(0.1, max(0.0, next_flush - elapsed), max(0.0, self.args.duration - elapsed)) or 0.01)
            # each worker finishes at most one request: HTTPS one --timeout over all servers (+ the process grace),
            # etcd one put (2 x --timeout + grace) and its resolving reads
            join_deadline = time.monotonic() + (2 + RESOLVE_TRIES) * (2 * self.timeout + GRACE) + 2
            for thread in threads:
                thread.join(max(0.0, join_deadline - time.monotonic()))
            stuck = [thread.name for thread in threads if thread.is_alive()]
            self.stats.flush(jsonl, round(time.monotonic() - start_mono, 3), requests_log)
        if self.etcd:
            self.read_back()
        return self.summary(start_wall, time.monotonic() - start_mono, stuck)

    def summary(self, start_wall, duration, stuck):
        kinds = {}
        first = last = None
        total_ok = total_fail = 0
        with self.stats.lock:
            for (kind, target) in self.stats.order:
                row = dict(self.stats.totals[(kind, target)])
                meta = self.stats.kinds.get(kind, {})
                entry = kinds.get(kind)
                if entry is None:
                    entry = kinds[kind] = {"ok": 0, "fail": 0, "requests": 0, "targets": {}, "servers": list(meta.get("servers", []))}
                    for field in ("mode", "failovers", "ok_after_failover", "cert_failures", "blips", "max_client_blips"):
                        entry[field] = meta.get(field, 0)
                    entry["failure_reasons"] = dict(meta.get("failure_reasons", {}))
                    entry["failover_reasons"] = dict(meta.get("failover_reasons", {}))
                entry["ok"] += row["ok"]
                entry["fail"] += row["fail"]
                entry["requests"] += row["ok"] + row["fail"]
                row["requests"] = row["ok"] + row["fail"]
                entry["targets"][target] = row
                total_ok += row["ok"]
                total_fail += row["fail"]
                for failure, pick in ((row["first_failure"], "first"), (row["last_failure"], "last")):
                    if failure is None:
                        continue
                    tagged = dict(failure, kind=kind, target=target)
                    if pick == "first" and (first is None or failure["t"] < first["t"]):
                        first = tagged
                    if pick == "last" and (last is None or failure["t"] > last["t"]):
                        last = tagged
        if "etcd" in kinds:
            kinds["etcd"]["writes"] = self.ledger.summary()
        summary = {
            "probe_id": self.probe_id,
            "started": now_iso(start_wall),
            "start_t": round(start_wall, 3),
            "ended": now_iso(),
            "duration": round(duration, 3),
            "stop_reason": self.budget.reason or "unknown",
            "requests": total_ok + total_fail,
            "ok": total_ok,
            "failures": total_fail,
            "failovers": sum(entry["failovers"] for entry in kinds.values()),
            "cert_failures": sum(entry["cert_failures"] for entry in kinds.values()),
            "first_failure": first,
            "last_failure": last,
            "kinds": kinds,
            "path": self.path,
            "old_ca_sha256": self.old_ca_sha256,
            "current_ca_file": self.args.current_ca_file,
            "current_ca_changes": self.ca_changes,
            "clients": {"https": "Go crypto/tls (tests/lab/tlsclient)" if self.targets else None,
                        "etcd": "etcdctl (clientv3, all endpoints)" if self.etcd else None},
            "stuck_threads": stuck,
            "restarts": self.args.restarts,
            "settings": {"interval": self.args.interval, "duration": self.args.duration, "max_requests": self.args.max_requests,
                         "timeout": self.timeout, "targets": [e.label for e in self.targets], "etcd_endpoints": [e.label for e in self.etcd],
                         "netns": self.args.netns, "pin": bool(self.args.pin)},
        }
        summary["verdict"] = verdict(summary, self.args.restarts)
        return summary


def verdict(summary, restarts):
    """Problems per kind: certificate failures, lost or unresolved etcd writes, a failed read-back, more blips
    for one client than ``restarts`` (at most one failover or failed run per server restart and client)."""
    problems = {}
    for kind, entry in summary["kinds"].items():
        found = []
        if entry.get("cert_failures"):
            found.append("%d certificate failures" % entry["cert_failures"])
        writes = entry.get("writes")
        if writes:
            if writes["read_back"] != "ok":
                found.append("acknowledged writes not read back (%s)" % writes["read_back"])
            if writes["lost"]:
                found.append("%d acknowledged writes lost: %s" % (writes["lost"], ", ".join(writes["lost_keys"])))
            if writes["unresolved"]:
                found.append("%d failed writes neither found written nor absent" % writes["unresolved"])
        if entry.get("max_client_blips", 0) > (restarts or 0):
            found.append("%d availability blips for one client, more than the %d server restarts expected"
                         % (entry["max_client_blips"], restarts or 0))
        if entry.get("requests", 0) == 0:
            found.append("no request made")
        if found:
            problems[kind] = found
    if summary.get("stuck_threads"):
        problems.setdefault("probe", []).append("client threads did not stop: %s" % ", ".join(summary["stuck_threads"]))
    return {"ok": not problems, "restarts": restarts, "problems": problems}


def summary_line(summary):
    """One line: per kind ok/fail, failovers, certificate failures, blips, etcd writes; the verdict."""
    parts = []
    reasons = []
    for kind in KINDS:
        entry = summary["kinds"].get(kind)
        if not entry:
            continue
        text = "%s %d ok/%d fail" % (kind, entry["ok"], entry["fail"])
        details = ["%d cert failures" % entry.get("cert_failures", 0), "%d blips" % entry.get("blips", 0)]
        if entry.get("mode") == "failover":
            details.insert(0, "%d failovers" % entry.get("failovers", 0))
        writes = entry.get("writes")
        if writes:
            details = ["%d acked writes, %d lost, %d failed (%d written, %d absent, %d unresolved)" % (
                writes["acked"], writes["lost"], writes["failed"], writes["failed_written"], writes["failed_absent"], writes["unresolved"])] + details
        parts.append("%s [%s]" % (text, ", ".join(details)))
        top = sorted((entry.get("failure_reasons") or {}).items(), key=lambda item: (-item[1], item[0]))[:2]
        reasons += ["%s %dx %s" % (kind, count, reason) for reason, count in top]
    line = "probe: %s in %.1fs (stop: %s), %d requests, %d failures, %d failovers, %d cert failures" % (
        ", ".join(parts), summary["duration"], summary["stop_reason"], summary["requests"], summary["failures"],
        summary.get("failovers", 0), summary.get("cert_failures", 0))
    if reasons:
        line += "; failure reasons: " + "; ".join(reasons)
    result = summary.get("verdict") or {}
    if result.get("ok"):
        line += "; verdict OK"
    else:
        line += "; verdict: " + "; ".join("%s: %s" % (kind, ", ".join(found)) for kind, found in sorted((result.get("problems") or {}).items()))
    return line


def failing_kinds(summary, kinds):
    problems = (summary.get("verdict") or {}).get("problems") or {}
    return [kind for kind in kinds if kind in problems or ("probe" in problems and kind in summary["kinds"])]


# ---------------------------------------------------------------------------------------------
# CLI


def add_run_options(parser):
    parser.add_argument("--out", required=True, help="output directory (probe.jsonl, summary.json; 'stop' file ends the run)")
    parser.add_argument("--targets", default="", help="comma list of host:port served with TLS (k3s 6443, rke2 9345)")
    parser.add_argument("--old-ca", help="pre-rotation CA file, copied at start (the old client trusts only this)")
    parser.add_argument("--current-ca-file", help="CA bundle file of the current client, read at each request")
    parser.add_argument("--client-cert", help="client certificate (e.g. server/tls/client-admin.crt); old client: as at start")
    parser.add_argument("--client-key", help="its key")
    parser.add_argument("--lab-state", help="lab state.json (tests/lab/kubepki_lab.py): add every server as a target (and etcd endpoint)")
    parser.add_argument("--lab-port", type=int, default=6443, help="port of the lab targets (k3s 6443, rke2 9345; 0: none)")
    parser.add_argument("--lab-etcd-port", type=int, default=0, help="with --lab-state: add https://<server>:PORT etcd endpoints (2379; 0: none)")
    parser.add_argument("--path", help="HTTP path (default /readyz with a client certificate, else /cacerts)")
    parser.add_argument("--server-name", help="name to verify and send as SNI instead of the target host")
    parser.add_argument("--tls-client", help="the built Go client (default: built from tests/lab/tlsclient with go, cached)")
    parser.add_argument("--etcd-endpoints", default="", help="comma list of https://ip:2379 etcd client URLs (all given to etcdctl)")
    parser.add_argument("--etcd-cacert", help="etcd server CA file")
    parser.add_argument("--etcd-cert", help="etcd client certificate")
    parser.add_argument("--etcd-key", help="etcd client key")
    parser.add_argument("--etcdctl", default="etcdctl", help="etcdctl binary (Debian etcd-client)")
    parser.add_argument("--etcd-prefix", default="/kubepki-probe/", help="key prefix (the probe's keys are deleted at exit)")
    parser.add_argument("--interval", type=float, default=0.2,
                        help="pause between two requests of one client (s): of one kind; with --pin of one kind to one target")
    parser.add_argument("--pin", action="store_true", help="one HTTPS client per kind and target, no failover")
    parser.add_argument("--restarts", type=int, default=0,
                        help="server restarts expected during the run: the verdict allows this many availability blips per client")
    parser.add_argument("--duration", type=float, default=300.0, help="stop after this many seconds")
    parser.add_argument("--max-requests", type=int, default=100000, help="stop after this many requests (all kinds together)")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-request timeout (s)")
    parser.add_argument("--readback-timeout", type=float, default=30.0, help="time for reading the acknowledged etcd writes back at the end (s)")
    parser.add_argument("--allow-net", default=DEFAULT_ALLOW, help="comma list of networks the probe may talk to (default %(default)s)")
    parser.add_argument("--netns", help="run inside this network namespace (re-exec under 'ip netns exec')")
    parser.add_argument("--fail-on", default="", help="comma list of kinds (old,current,etcd): exit 1 if the verdict flags any of them")


def check_run_args(args):
    if not 0 < args.duration <= 86400:
        raise ProbeError("--duration must be in (0, 86400]")
    if not 0 < args.max_requests <= 1000000:
        raise ProbeError("--max-requests must be in [1, 1000000]")
    if not 0.0 <= args.interval <= 3600 or not 0 < args.timeout <= 60 or not 0 < args.readback_timeout <= 600:
        raise ProbeError("--interval must be in [0, 3600], --timeout in (0, 60] and --readback-timeout in (0, 600]")
    if args.restarts < 0:
        raise ProbeError("--restarts must be >= 0")
    bad = [kind for kind in split_list(args.fail_on) if kind not in KINDS]
    if bad:
        raise ProbeError("--fail-on takes %s, not %s" % (",".join(KINDS), ",".join(bad)))


def current_netns():
    """Name of the network namespace this process is in (by inode under /run/netns), or None."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
        for name in os.listdir("/run/netns"):
            if os.stat(os.path.join("/run/netns", name)).st_ino == mine:
                return name
    except OSError:
        return None
    return None


def cmd_run(args, argv):
    check_run_args(args)
    if args.netns and os.environ.get(NETNS_ENV) != args.netns:
        if current_netns() != args.netns:
            os.environ[NETNS_ENV] = args.netns
            sys.stdout.flush()
            sys.stderr.flush()
            # same PID after exec: a pid file written by 'start' stays right
            os.execvp("ip", ["ip", "netns", "exec", args.netns, sys.executable, os.path.abspath(__file__), "run"] + argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for name in (STOP_FILE, SUMMARY_FILE):
        if os.path.exists(os.path.join(out, name)):
            os.unlink(os.path.join(out, name))
    try:
        probe = Probe(args)
    except ProbeError:
        remove_snapshot(out)
        raise
    pid_path = os.path.join(out, PID_FILE)
    with open(pid_path, "w", encoding="ascii") as handle:
        handle.write("%d\n" % os.getpid())

    def on_signal(signum, frame):
        del frame
        probe.budget.halt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        summary = probe.run(out)
        write_json(os.path.join(out, SUMMARY_FILE), summary)
    finally:
        probe.cleanup()
        try:
            if read_bytes(pid_path).strip() == str(os.getpid()).encode():
                os.unlink(pid_path)
        except OSError:
            pass
    print(summary_line(summary), flush=True)
    return 1 if failing_kinds(summary, split_list(args.fail_on)) else 0


def pid_state(pid):
    """'running', 'gone' (also for zombies) for a probe process, or 'other' when the PID is not a probe."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as handle:
            stat = handle.read()
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read()
    except OSError:
        return "gone"
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return "gone"
    if b"probe.py" not in cmdline:
        return "other"
    return "running"


def read_pid(out):
    try:
        return int(read_bytes(os.path.join(out, PID_FILE)).strip() or 0) or None
    except (OSError, ValueError):
        return None


def wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_state(pid) != "running":
            return True
        time.sleep(0.1)
    return pid_state(pid) != "running"


def cmd_start(args, argv):
    check_run_args(args)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    pid = read_pid(out)
    if pid and pid_state(pid) == "running":
        raise ProbeError("a probe (pid %d) already runs in %s: 'stop' it first" % (pid, out))
    for name in (STOP_FILE, SUMMARY_FILE, PID_FILE, JSONL_FILE, REQUESTS_FILE):
        if os.path.exists(os.path.join(out, name)):
            os.unlink(os.path.join(out, name))
    if (args.targets or args.lab_state) and not args.tls_client:
        # built here, in the foreground: a cold go build takes longer than --start-timeout
        argv = argv + ["--tls-client", tls_client_binary()]
    run_argv = [sys.executable, os.path.abspath(__file__), "run"] + argv
    with open(os.path.join(out, LOG_FILE), "ab") as log:
        proc = subprocess.Popen(run_argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_text = read_bytes(os.path.join(out, LOG_FILE)).decode(errors="replace")[-2000:]
            raise ProbeError("probe exited with %s at start; %s:\n%s" % (proc.returncode, os.path.join(out, LOG_FILE), log_text))
        if read_pid(out) == proc.pid and os.path.exists(os.path.join(out, JSONL_FILE)):
            print("probe started: pid %d, out %s" % (proc.pid, out), flush=True)
            return 0
        time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise ProbeError("probe did not start within %.0fs (killed); see %s" % (args.start_timeout, os.path.join(out, LOG_FILE)))


def load_summary(out):
    try:
        with open(os.path.join(out, SUMMARY_FILE), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def cmd_stop(args):
    out = os.path.abspath(args.out)
    pid = read_pid(out)
    note = ""
    if pid and pid_state(pid) == "running":
        with open(os.path.join(out, STOP_FILE), "w", encoding="ascii") as handle:
            handle.write("stop\n")
        if not wait_gone(pid, args.timeout):
            note = " (did not stop within %.0fs: SIGTERM)" % args.timeout
            os.kill(pid, signal.SIGTERM)
            if not wait_gone(pid, 5):
                note = " (did not stop: SIGKILL, no summary)"
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, 5)
    return report(out, args.fail_on, note)


def report(out, fail_on, note=""):
    summary = load_summary(out)
    if summary is None:
        print("probe: no summary in %s%s" % (out, note), flush=True)
        return 3
    print(summary_line(summary) + note, flush=True)
    return 1 if failing_kinds(summary, split_list(fail_on)) else 0


def build_parser():
    parser = argparse.ArgumentParser(description="Traffic probe of real clients for the kubepki lab "
                                                 "(Go TLS client with the old and the current CA, etcdctl puts)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_options(sub.add_parser("run", help="probe in the foreground until duration/max-requests/<out>/stop/SIGTERM"))
    start = sub.add_parser("start", help="run in the background (pid in <out>/probe.pid, output in <out>/probe.log)")
    add_run_options(start)
    start.add_argument("--start-timeout", type=float, default=15.0, help="wait this long for the probe to come up")
    stop = sub.add_parser("stop", help="create <out>/stop, wait, kill if needed; print the summary")
    stop.add_argument("--out", required=True)
    stop.add_argument("--timeout", type=float, default=90.0, help="wait this long (clients finishing, etcd read-back) before SIGTERM")
    stop.add_argument("--fail-on", default="", help="comma list of kinds: exit 1 if the verdict flags any of them")
    show = sub.add_parser("summary", help="print the one-line summary of a finished run")
    show.add_argument("--out", required=True)
    show.add_argument("--fail-on", default="", help="comma list of kinds: exit 1 if the verdict flags any of them")
    return parser


def strip_start_only(argv):
    """argv after 'start', without the options 'run' does not take."""
    result = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--start-timeout":
            skip = True
            continue
        if item.startswith("--start-timeout="):
            continue
        result.append(item)
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args, argv[argv.index("run") + 1:])
        if args.command == "start":
            return cmd_start(args, strip_start_only(argv[argv.index("start") + 1:]))
        if args.command == "stop":
            return cmd_stop(args)
        return report(os.path.abspath(args.out), args.fail_on)
    except ProbeError as exc:
        print("probe: error: %s" % exc, file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
