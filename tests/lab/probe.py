# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Traffic probe for the kubepki.certs lab: live TLS traffic during a playbook run (CA rotation).

Three kinds of traffic, each one logical client in its own thread, until ``--duration`` has passed,
``--max-requests`` requests were made, ``<out>/stop`` appears or SIGTERM/SIGINT arrives:

``old``
    A client that holds only the pre-rotation CA (``--old-ca``, read once at start) and the client
    certificate as it was at start. GET ``--path`` (``/readyz`` with a client certificate, else
    ``/cacerts``). A cross-signed rotation must keep it working.
``current``
    A client that trusts ``--current-ca-file`` and presents ``--client-cert``/``--client-key``, all
    re-read at most once per second: copy the rotated bundle there and it follows.
``etcd``
    A put + get of a probe key through etcd's v3 JSON gateway (``/v3/kv/put``, ``/v3/kv/range``) over
    TLS with a client certificate, or with ``etcdctl`` (``--etcd-mode etcdctl``, bounded by ``--timeout``).
    CA, cert and key files are re-read each second.

Each kind is ONE client of a HA cluster, as behind k3s's client load balancer: it talks to all targets
(old, current) or all ``--etcd-endpoints`` (etcd), sticks to the server that answered last, and when a
server cannot be reached moves on to the next one within the same request: each server at most once,
all within ``--timeout``. Only connection-level failures fail over: a refused/reset/timed-out TCP dial,
or a TLS handshake closed by the peer without an alert (a server closing its listener). Certificate
verification failures and TLS alerts never fail over; nor does anything after the request was sent
(HTTP 503/500 from a stopping or unready server, read timeouts): see ``failover_reason``. A request
fails only when no server gave a good answer. Failovers are counted per kind and server, with their
reasons, and never folded into ``ok``. ``--pin`` restores one client per kind and target (no failover).

Every request opens a new TCP + TLS connection and has a short timeout (``--timeout``, 2 s).
Clients verify like Go clients (kubectl, k3s agents, the apiserver's etcd client): any certificate of the
trust file anchors a chain, and when OpenSSL's single path fails the probe retries once over the other
paths through the certificates the server sent (``ok_alt_chain`` counts these successes; see ``connect``).
k3s sends leaf + intermediate + new self-signed root + cross-signed root + old root after a cross-signed
rotation: Go clients holding the old root accept that, OpenSSL clients (curl, Python) do not.
``--openssl-only`` probes as an OpenSSL client instead.
Traffic goes only to loopback and ``--allow-net`` networks (the lab's 10.123.0.0/16 by default); names
are resolved through /etc/hosts only (no DNS). Output in ``--out`` DIR:

- ``probe.jsonl``: every second one line per kind and target
  ``{"t", "elapsed", "kind", "target", "ok", "fail", "failovers", "last_error", "ok_alt_chain"}``
  (a request counts for the server that answered it, or failed for the last one tried; ``failovers``: requests
  that left that server for the next one);
- ``requests.jsonl``: one line per request ``{"t", "elapsed", "kind", "seq", "ok", "server", "tried",
  "failovers", "alt_chain", "error"}`` (``server``: who answered; ``tried``: every attempt in order);
- ``summary.json`` at exit: per kind ok, fail, failovers, ok_after_failover, failure_reasons and
  failover_reasons (counts), mode (failover|pin), servers, and per target the same totals with
  first/last failure times and errors; stop reason and duration; a one-line summary is printed.

Usage::

    python3 tests/lab/probe.py run --targets 10.123.0.11:6443,10.123.0.12:6443 --old-ca old-server-ca.crt \\
        --current-ca-file /tmp/lab/probe-ca.crt --client-cert client-admin.crt --client-key client-admin.key \\
        --etcd-endpoints https://10.123.0.11:2379 --etcd-cacert etcd/server-ca.crt --etcd-cert etcd/client.crt \\
        --etcd-key etcd/client.key --interval 0.2 --duration 300 --out /tmp/lab/probe
    python3 tests/lab/probe.py start ...same options...   # background; <out>/probe.pid, <out>/probe.log
    python3 tests/lab/probe.py stop --out /tmp/lab/probe --fail-on old,current,etcd
    python3 tests/lab/probe.py summary --out /tmp/lab/probe

``--lab-state BASE/state.json`` adds every server of a lab (``--lab-port``, 6443; rke2 9345) and, with
``--lab-etcd-port 2379``, its etcd endpoint, and allows the lab's subnet. Exit codes: 0, 1 (``--fail-on``
kinds failed), 2 (bad arguments or files, nothing probed), 3 (``stop``/``summary``: no summary).

``--netns NAME`` re-executes the probe under ``ip netns exec NAME`` (same PID). It is not needed
for the lab: the root namespace owns the bridge address (10.123.0.1) and reaches every host.
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
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

KINDS = ("old", "current", "etcd")
DEFAULT_ALLOW = "127.0.0.0/8,::1/128,10.123.0.0/16"
STOP_FILE = "stop"
PID_FILE = "probe.pid"
LOG_FILE = "probe.log"
JSONL_FILE = "probe.jsonl"
REQUESTS_FILE = "requests.jsonl"
SUMMARY_FILE = "summary.json"
MAX_BODY = 1 << 20
RELOAD_EVERY = 1.0
MAX_CA_CHANGES = 200
NETNS_ENV = "KUBEPKI_PROBE_NETNS"
MARKER = "kubepki-probe"
PARTIAL_CHAIN = getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0x80000)
# The certificates a server sent are readable from Python 3.10 on (needed for Go-style path building).
ALT_CHAINS_SUPPORTED = sys.version_info >= (3, 10)
# Where a connection attempt failed (set as ``probe_stage`` on the exception; see ``failover_reason``).
STAGE_DIAL = "dial"
STAGE_HANDSHAKE = "handshake"
STAGE_CUT = "cut"  # etcd only: the member closed the connection after the request was sent (it is stopping)
MIN_DIAL = 0.25       # a TCP connect gets at least this long (if the request has it left) ...
MIN_ATTEMPT = 0.05    # ... and the next server is not tried with less than this left
MAX_REASONS = 32      # distinct failure/failover reasons kept per kind (then "other")


class ProbeError(Exception):
    """Bad arguments or unusable input files (exit code 2)."""


class AnswerError(ValueError):
    """A server answered, but not with what was asked (HTTP status other than 200, wrong etcd value)."""


class RequestFailed(Exception):
    """A logical request failed: ``error`` (full text) and ``reason`` (short, counted in the summary)."""

    def __init__(self, error, reason):
        super().__init__(error)
        self.error = error
        self.reason = reason


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
    if isinstance(exc, AnswerError):
        return str(exc)[:500]
    text = str(exc) or exc.__class__.__name__
    return ("%s: %s" % (exc.__class__.__name__, text))[:500]


def reason_of(text):
    """A short, countable form of an error text (no OpenSSL source lines, no probe values)."""
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text or "")
    if text.startswith("etcd get returned"):
        return "etcd get returned another value"
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
# TLS + HTTP/1.1 over one fresh connection per request


def client_context(cadata, cert=None, key=None, check_hostname=True, partial_chain=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if partial_chain:
        # Go clients (kubectl, k3s agents, the apiserver's etcd client) accept any certificate of their
        # CA pool as trust anchor; OpenSSL needs this flag to do the same.
        ctx.verify_flags |= PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=cadata.decode("ascii", errors="replace") if isinstance(cadata, bytes) else cadata)
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx


def _decode_chunked(data):
    out = b""
    while data:
        line, sep, rest = data.partition(b"\r\n")
        if not sep:
            raise ValueError("truncated chunked body")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            return out
        out += rest[:size]
        data = rest[size + 2:]
    raise ValueError("truncated chunked body")


def presented_chain(tls):
    """PEM of the certificates the peer sent, in its order (Python 3.10+), or None when unavailable."""
    sslobj = getattr(tls, "_sslobj", None)
    getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is None:
        return None
    chain = []
    for cert in getter() or []:
        info = cert.get_info()
        chain.append({"pem": cert.public_bytes(), "self_signed": info.get("subject") == info.get("issuer")})
    return chain


class Trust:
    """What one client trusts and presents: the strict SSLContext plus the Go-style retry (see ``connect``)."""

    def __init__(self, cadata, cert=None, key=None, check_hostname=True, partial_chain=True, alt_chains=True):
        self.cadata = cadata.decode("ascii", errors="replace") if isinstance(cadata, bytes) else cadata
        self.cert = cert
        self.key = key
        self.check_hostname = check_hostname
        self.partial_chain = partial_chain
        self.alt_chains = alt_chains
        self.ctx = client_context(self.cadata, cert, key, check_hostname, partial_chain)
        self.lock = threading.Lock()
        self.augmented = {}
        self.unverified_ctx = None

    def unverified(self):
        with self.lock:
            if self.unverified_ctx is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                if self.cert:
                    ctx.load_cert_chain(self.cert, self.key or None)
                self.unverified_ctx = ctx
            return self.unverified_ctx

    def with_intermediates(self, pems):
        """The trust anchors plus ``pems`` as intermediates only (no partial chain: only self-signed anchors end a chain)."""
        key = tuple(pems)
        with self.lock:
            ctx = self.augmented.get(key)
            if ctx is None:
                if len(self.augmented) > 16:
                    self.augmented.clear()
                ctx = client_context(self.cadata + "\n" + "".join(pems), self.cert, self.key, self.check_hostname, partial_chain=False)
                self.augmented[key] = ctx
            return ctx


def _open(ctx, endpoint, server_name, deadline, dial_deadline=None):
    """A verified TLS socket; errors carry ``probe_stage`` ("dial" or "handshake") for ``failover_reason``."""
    dial_by = deadline if dial_deadline is None else min(deadline, dial_deadline)
    try:
        raw = socket.create_connection((endpoint.address, endpoint.port), timeout=max(0.05, dial_by - time.monotonic()))
    except OSError as exc:
        exc.probe_stage = STAGE_DIAL
        raise
    try:
        raw.settimeout(max(0.05, deadline - time.monotonic()))
        return ctx.wrap_socket(raw, server_hostname=server_name)
    except BaseException as exc:
        raw.close()
        if isinstance(exc, OSError):
            exc.probe_stage = STAGE_HANDSHAKE
        raise


def connect(trust, endpoint, server_name, deadline, dial_deadline=None):
    """TLS connection verified like a Go client; returns (socket, via_alt_chain).

    OpenSSL follows the first issuer it finds among the certificates the server sent; k3s sends leaf +
    intermediate + new self-signed root + cross-signed root + old root, so a client trusting only the old
    root fails in OpenSSL ("self-signed certificate in certificate chain") while Go, which tries every
    candidate path, succeeds. On a verification failure the probe therefore fetches the presented chain
    (handshake without verification), adds its non-self-signed certificates to the store as
    intermediates and verifies again on a new connection: success iff some path through the presented
    certificates reaches the client's anchors. ``--openssl-only`` turns this off.

    Should the server go away between these connections (dial refused, handshake closed), that error is
    raised as it is: the server did not finish the Go-style verification, it did not fail it.
    """
    try:
        return _open(trust.ctx, endpoint, server_name, deadline, dial_deadline), False
    except ssl.SSLCertVerificationError as exc:
        if not trust.alt_chains:
            raise
        first = exc
    with _open(trust.unverified(), endpoint, server_name, deadline) as probe_tls:
        chain = presented_chain(probe_tls)
    intermediates = [cert["pem"] for cert in (chain or [])[1:] if not cert["self_signed"]]
    if not intermediates:
        raise first
    try:
        return _open(trust.with_intermediates(intermediates), endpoint, server_name, deadline), True
    except ssl.SSLCertVerificationError:
        raise first from None


def https_request(trust, endpoint, server_name, method, path, timeout, body=None, user_agent=MARKER, deadline=None, dial_deadline=None):
    """One request on a new connection; returns (status, body, via_alt_chain). Raises OSError/ssl.SSLError/ValueError.

    ``deadline`` (monotonic) bounds the whole exchange (default: now + ``timeout``), ``dial_deadline`` the TCP connect.
    """
    if deadline is None:
        deadline = time.monotonic() + timeout
    headers = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%d" % (server_name, endpoint.port), "User-Agent: %s" % user_agent,
               "Accept: */*", "Connection: close"]
    if body is not None:
        headers += ["Content-Type: application/json", "Content-Length: %d" % len(body)]
    request = ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + (body or b"")
    tls, alt = connect(trust, endpoint, server_name, deadline, dial_deadline)
    with tls:
        tls.sendall(request)
        data = b""
        head_len = None
        want = None
        while len(data) < MAX_BODY:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete response within %.1fs" % timeout)
            tls.settimeout(remaining)
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
            if head_len is None and b"\r\n\r\n" in data:
                head_len = data.index(b"\r\n\r\n") + 4
                for line in data[:head_len].decode("latin-1").split("\r\n")[1:]:
                    name, sep, value = line.partition(":")
                    if sep and name.strip().lower() == "content-length":
                        want = int(value.strip())
            if want is not None and len(data) >= head_len + want:
                break
    if head_len is None:
        raise ValueError("no HTTP response (%d bytes)" % len(data))
    head = data[:head_len].decode("latin-1")
    status_line = head.split("\r\n", 1)[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        raise ValueError("bad status line %r" % head[:80])
    payload = data[head_len:]
    if want is not None:
        payload = payload[:want]
    elif "transfer-encoding: chunked" in head.lower():
        payload = _decode_chunked(payload)
    return int(status_line[1]), payload, alt


class ReloadingTrust:
    """A Trust built from files, rebuilt when their bytes change (checked at most once a second)."""

    def __init__(self, ca_file, cert=None, key=None, check_hostname=True, partial_chain=True, alt_chains=True, on_change=None):
        self.ca_file = ca_file
        self.cert = cert
        self.key = key
        self.check_hostname = check_hostname
        self.partial_chain = partial_chain
        self.alt_chains = alt_chains
        self.on_change = on_change
        self.lock = threading.Lock()
        self.trust = None
        self.digest = None
        self.checked = 0.0
        self.reloads = 0
        self.reload_errors = 0
        self.last_reload_error = None

    def _digest(self):
        sha = hashlib.sha256()
        for path in (self.ca_file, self.cert, self.key):
            if path:
                sha.update(read_bytes(path))
                sha.update(b"\0")
        return sha.hexdigest()

    def get(self):
        with self.lock:
            now = time.monotonic()
            if self.trust is not None and now - self.checked < RELOAD_EVERY:
                return self.trust
            self.checked = now
            try:
                digest = self._digest()
                if digest != self.digest:
                    trust = Trust(read_bytes(self.ca_file), self.cert, self.key, self.check_hostname, self.partial_chain, self.alt_chains)
                    changed = self.digest is not None
                    self.trust, self.digest = trust, digest
                    self.reloads += 1
                    if self.on_change:
                        self.on_change(self.ca_file, digest, changed)
            except (OSError, ssl.SSLError, ValueError) as exc:
                # A file caught half-written keeps the previous trust; without one the request fails.
                self.reload_errors += 1
                self.last_reload_error = error_text(exc)
                if self.trust is None:
                    raise
            return self.trust


# ---------------------------------------------------------------------------------------------
# one logical client over several servers (k3s's client load balancer)


CLOSED_BY_PEER = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


def failover_reason(exc):
    """Why a request may move on to the next server after ``exc``; None when it must count as failed.

    The rule follows k3s's client load balancer (pkg/agent/loadbalancer), a TCP proxy in front of the
    servers: it moves to the next server only when dialing the current one fails. So:

    - dial errors (TCP connect refused, reset, unreachable, timed out): fail over;
    - the TLS handshake ended by the peer without a TLS alert (EOF, reset, abort): fail over. That is a
      server closing its listener with connections still queued (a stopping k3s, the lab double's
      shutdown); the client's next dial through the load balancer would be refused and move on;
    - certificate verification failures and every TLS alert (bad certificate, unknown CA, ...): NEVER.
      They are the trust breakage the probe is there to catch; the next server would probably accept,
      and that must not hide the broken one;
    - anything after the handshake (the request was sent): never. An HTTP 503 or 500 from a server that
      is shutting down or not ready is an answer, not a dial error; a read timeout, an EOF or a reset
      before the response (in TLS 1.3 also how a rejected client certificate can show) count as failed;
    - a TLS handshake timeout: never (the dial worked; the server is up but does not answer);
    - etcd only: a request cut off by a member that is stopping (EOF or reset after the request was sent, or
      the JSON gateway's "closed the stream without sending trailers"): repeated on the next member and
      reported as a failover with that reason. The probe measures trust across the rotation, not write
      durability at a member's shutdown; the put is the probe's own key and the get that follows checks it.
      etcd's Go client moves to another member when its connection closes, too.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return None
    stage = getattr(exc, "probe_stage", None)
    if stage == STAGE_DIAL and isinstance(exc, OSError):
        return "dial"
    if stage == STAGE_HANDSHAKE and (isinstance(exc, CLOSED_BY_PEER) or getattr(exc, "reason", None) == "UNEXPECTED_EOF_WHILE_READING"):
        return "TLS handshake closed by peer"
    if stage == STAGE_CUT:
        return "etcd request cut by a stopping member"
    return None


class CutError(OSError):
    """An etcd request the member cut off mid-way (see failover_reason)."""

    probe_stage = STAGE_CUT


# what etcd's JSON gateway answers when the member's gRPC server stops under a request
NO_RESPONSE = "no HTTP response (0 bytes)"
GATEWAY_CUT_MARKERS = ("closed the stream without sending trailers", "transport is closing")


class Trace:
    """What one logical request did: servers tried in order, failovers (server, reason, error), who answered."""

    def __init__(self):
        self.tried = []
        self.failovers = []
        self.server = None
        self.alt = False


class Pool:
    """The server list of one logical client: sticks to the server that last answered, moves on after dial errors.

    Within one request each server is tried at most once, from the sticky one on in list order (wrapping
    around), all within the request's ``timeout``; a TCP connect gets at most its share of what is left
    (at least ``MIN_DIAL``) so that a silently dropping server does not eat the time of the others. When
    no server answers, the sticky server stays as it was.
    """

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
                                        "request timeout during failover; last: %s %s" % (pending[1], reason_of(pending[2])))
                trace.failovers.append(pending)
            dial_deadline = time.monotonic() + max(min(left, MIN_DIAL), left / (count - step))
            trace.tried.append(endpoint.label)
            try:
                result = attempt(endpoint, deadline, dial_deadline)
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                why = failover_reason(exc)
                text = error_text(exc)
                if why is None:
                    raise RequestFailed(text, reason_of(text)) from exc
                pending = (endpoint.label, why, text)
                continue
            self.current = index
            trace.server = endpoint.label
            return result
        if count == 1:
            raise RequestFailed(pending[2], "%s %s" % (pending[1], reason_of(pending[2])))
        raise RequestFailed("no server answered (%d tried): %s" % (count, pending[2]), "no server answered; last: %s %s" % (pending[1], reason_of(pending[2])))


class Client:
    """One logical client of one kind: all servers of that kind (or one with ``--pin``) behind a Pool."""

    def __init__(self, kind, endpoints, index):
        self.kind = kind
        self.pool = Pool(endpoints)
        self.index = index
        self.name = "%s-%s" % (kind, "+".join(endpoint.label for endpoint in endpoints))
        self.answered = 0

    @property
    def labels(self):
        return [endpoint.label for endpoint in self.pool.endpoints]


# ---------------------------------------------------------------------------------------------
# bookkeeping


def _row():
    return {"ok": 0, "fail": 0, "failovers": 0, "first_failure": None, "last_failure": None, "last_ok": None, "last_error": None,
            "last_failover": None, "ok_alt_chain": 0}


def _window():
    return {"ok": 0, "fail": 0, "failovers": 0, "last_error": None, "ok_alt_chain": 0}


def _count(table, reason):
    if reason not in table and len(table) >= MAX_REASONS:
        reason = "other"
    table[reason] = table.get(reason, 0) + 1


class Stats:
    """Totals per kind and per (kind, server), per-second windows, and one record per request.

    A request counts once: ``ok`` for the server that answered, or ``fail`` for the last server tried.
    ``failovers`` of a server counts the times a request left it for the next server (see ``failover_reason``).
    """

    def __init__(self, start_wall, start_mono):
        self.lock = threading.Lock()
        self.start_wall = start_wall
        self.start_mono = start_mono
        self.totals = {}
        self.window = {}
        self.order = []
        self.kinds = {}
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
                                            "failover_reasons": {}})
        for label in client.labels:
            if label not in self.kinds[client.kind]["servers"]:
                self.kinds[client.kind]["servers"].append(label)

    def stamp(self):
        elapsed = time.monotonic() - self.start_mono
        return {"t": round(self.start_wall + elapsed, 3), "elapsed": round(elapsed, 3)}

    def record(self, kind, target, error=None, alt=False, trace=None, reason=None, seq=None):
        """One finished request of ``kind``: answered by ``target`` (error None) or failed there."""
        stamp = self.stamp()
        failovers = trace.failovers if trace else []
        with self.lock:
            total, window = self.totals[(kind, target)], self.window[(kind, target)]
            entry = self.kinds.get(kind)
            for label, why, text in failovers:
                row, win = self.totals[(kind, label)], self.window[(kind, label)]
                row["failovers"] += 1
                win["failovers"] += 1
                row["last_failover"] = dict(stamp, error=text)
                if entry is not None:
                    entry["failovers"] += 1
                    _count(entry["failover_reasons"], "%s %s" % (why, reason_of(text)))
            if error is None:
                total["ok"] += 1
                window["ok"] += 1
                total["last_ok"] = stamp
                if alt:
                    total["ok_alt_chain"] += 1
                    window["ok_alt_chain"] += 1
                if failovers and entry is not None:
                    entry["ok_after_failover"] += 1
            else:
                total["fail"] += 1
                window["fail"] += 1
                window["last_error"] = error
                total["last_error"] = error
                failure = dict(stamp, error=error)
                if total["first_failure"] is None:
                    total["first_failure"] = failure
                total["last_failure"] = failure
                if entry is not None:
                    _count(entry["failure_reasons"], reason or reason_of(error))
            self.requests.append(dict(stamp, kind=kind, seq=seq, ok=error is None, server=target if error is None else None,
                                      tried=list(trace.tried) if trace else [target], failovers=len(failovers), alt_chain=bool(alt),
                                      error=error))

    def flush(self, handle, elapsed, requests_handle=None):
        with self.lock:
            lines = []
            for key in self.order:
                window = self.window[key]
                lines.append({"t": round(self.start_wall + elapsed, 3), "elapsed": round(elapsed, 3), "kind": key[0], "target": key[1],
                              "ok": window["ok"], "fail": window["fail"], "failovers": window["failovers"], "last_error": window["last_error"],
                              "ok_alt_chain": window["ok_alt_chain"]})
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


# ---------------------------------------------------------------------------------------------
# the three kinds of traffic


def remove_snapshot(out):
    snapshot_dir = os.path.join(os.path.abspath(out), ".old-client")
    for name in ("client.crt", "client.key"):
        try:
            os.unlink(os.path.join(snapshot_dir, name))
        except OSError:
            pass
    try:
        os.rmdir(snapshot_dir)
    except OSError:
        pass


class Probe:
    def __init__(self, args):
        self.args = args
        self.allow = [ipaddress.ip_network(net, strict=False) for net in split_list(args.allow_net)]
        self.timeout = args.timeout
        self.check_hostname = not args.no_check_hostname
        self.partial_chain = not args.no_partial_chain
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
        self.ca_lock = threading.Lock()
        self.old = None
        self.old_ca_sha256 = None
        self.current = None
        self.etcd_trust = None
        self.snapshot_dir = None
        alt = not args.openssl_only
        if self.targets:
            try:
                old_ca = read_bytes(args.old_ca)
                cert, key = self.snapshot_client(args)
                # Loaded once: this client never learns about the rotation.
                self.old = Trust(old_ca, cert, key, self.check_hostname, self.partial_chain, alt)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ProbeError("cannot load --old-ca/--client-cert: %s" % error_text(exc)) from exc
            self.old_ca_sha256 = hashlib.sha256(old_ca).hexdigest()
            self.current = ReloadingTrust(args.current_ca_file, args.client_cert, args.client_key, self.check_hostname, self.partial_chain, alt,
                                          on_change=self._ca_changed)
            try:
                self.current.get()
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ProbeError("cannot load --current-ca-file: %s" % error_text(exc)) from exc
        if self.etcd:
            self.etcd_trust = ReloadingTrust(args.etcd_cacert, args.etcd_cert, args.etcd_key, self.check_hostname, self.partial_chain, alt)
            try:
                self.etcd_trust.get()
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ProbeError("cannot load the etcd CA/cert/key: %s" % error_text(exc)) from exc
        self.probe_id = "%s-%d-%s" % (socket.gethostname(), os.getpid(), secrets.token_hex(3))
        self.stats = None
        self.clients = []
        self.budget = Budget(args.max_requests)

    def snapshot_client(self, args):
        """The old client keeps the client certificate it had at start: a private copy, removed at exit."""
        if not args.client_cert:
            return None, None
        self.snapshot_dir = os.path.join(os.path.abspath(args.out), ".old-client")
        os.makedirs(self.snapshot_dir, mode=0o700, exist_ok=True)
        paths = []
        for source, name in ((args.client_cert, "client.crt"), (args.client_key, "client.key")):
            target = os.path.join(self.snapshot_dir, name)
            data = read_bytes(source)
            with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
                handle.write(data)
            paths.append(target)
        return paths[0], paths[1]

    def cleanup(self):
        remove_snapshot(self.args.out)

    def _ca_changed(self, path, digest, changed):
        with self.ca_lock:
            if len(self.ca_changes) < MAX_CA_CHANGES:
                entry = {"t": round(time.time(), 3), "file": path, "files_sha256": digest, "initial": not changed}
                self.ca_changes.append(entry)

    def server_name(self, endpoint):
        return self.args.server_name or endpoint.host

    def http_attempt(self, trust_of, kind):
        """One GET of ``--path`` on one server (an ``attempt`` for Pool.call); returns via_alt_chain."""
        def attempt(endpoint, deadline, dial_deadline):
            status, body, alt = https_request(trust_of(), endpoint, self.server_name(endpoint), "GET", self.path, self.timeout,
                                              user_agent="%s/%s" % (MARKER, kind), deadline=deadline, dial_deadline=dial_deadline)
            if status != 200:
                raise AnswerError("HTTP %d: %s" % (status, body[:200].decode("utf-8", errors="replace").strip()))
            return alt
        return attempt

    def old_once(self, client, trace, seq):
        del seq
        trace.alt = client.pool.call(self.http_attempt(lambda: self.old, "old"), self.timeout, trace)

    def current_once(self, client, trace, seq):
        del seq
        trace.alt = client.pool.call(self.http_attempt(self.current.get, "current"), self.timeout, trace)

    def etcd_key(self, index):
        return "%s%s/%d" % (self.args.etcd_prefix, self.probe_id, index)

    def _gateway(self, endpoint, call, payload, deadline=None, dial_deadline=None):
        body = json.dumps(payload).encode()
        try:
            status, data, alt = https_request(self.etcd_trust.get(), endpoint, self.server_name(endpoint), "POST", "/v3/kv/" + call,
                                              self.timeout, body=body, user_agent="%s/etcd" % MARKER, deadline=deadline,
                                              dial_deadline=dial_deadline)
        except CLOSED_BY_PEER as exc:
            if getattr(exc, "probe_stage", None) is not None:
                raise  # dial or handshake: the general rule decides
            raise CutError("etcd %s: %s" % (call, error_text(exc))) from exc
        except ValueError as exc:
            if not str(exc).startswith(NO_RESPONSE):
                raise
            raise CutError("etcd %s: %s" % (call, exc)) from exc  # closed cleanly after the request, no answer
        if status != 200:
            text = data[:200].decode("utf-8", errors="replace").strip()
            if status >= 500 and any(marker in text for marker in GATEWAY_CUT_MARKERS):
                raise CutError("etcd %s: HTTP %d: %s" % (call, status, text))
            raise AnswerError("etcd %s: HTTP %d: %s" % (call, status, text))
        return json.loads(data.decode("utf-8") or "{}"), alt

    def _etcdctl(self, endpoint, *args, deadline=None, dial_deadline=None):
        """etcdctl against one endpoint. A TCP dial first (bounded by ``dial_deadline``) tells a dead endpoint
        (failover) from a failure of etcdctl itself (counted), whose messages cannot tell a refused dial from
        a TLS failure reliably (etcdctl 3.4: "all SubConns are in TransientFailure" for both)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        try:
            sock = socket.create_connection((endpoint.address, endpoint.port),
                                            timeout=max(0.05, min(deadline, dial_deadline or deadline) - time.monotonic()))
            sock.close()
        except OSError as exc:
            exc.probe_stage = STAGE_DIAL
            raise
        ctx_files = ["--cacert=%s" % self.args.etcd_cacert, "--cert=%s" % self.args.etcd_cert, "--key=%s" % self.args.etcd_key]
        url = "https://%s:%d" % (endpoint.host if ":" not in endpoint.host else "[%s]" % endpoint.host, endpoint.port)
        millis = max(200, int((deadline - time.monotonic()) * 1000))
        cmd = [self.args.etcdctl, "--endpoints=%s" % url, "--dial-timeout=%dms" % millis, "--command-timeout=%dms" % millis] + ctx_files + list(args)
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=millis / 1000.0 + 3, env=dict(os.environ, ETCDCTL_API="3"))
        if result.returncode != 0:
            # etcdctl prints retry warnings (JSON lines) first; its last line is the "Error: ..." summary
            lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
            raise ValueError("etcdctl %s: %s" % (args[0], lines[-1][:300] if lines else "exit code %d" % result.returncode))
        return result.stdout

    def etcd_call(self, client, trace, call, key, value=None):
        """One etcd call through the client's Pool: put/get/del of ``key``; returns the value read (get)."""
        if self.args.etcd_mode == "etcdctl":
            args = {"put": ("put", key, value), "get": ("get", key, "--print-value-only"), "del": ("del", key)}[call]
            out = client.pool.call(lambda endpoint, deadline, dial: self._etcdctl(endpoint, *args, deadline=deadline, dial_deadline=dial),
                                   self.timeout, trace)
            return out.rstrip("\n") if call == "get" else None
        b64key = base64.b64encode(key.encode()).decode()
        method, payload = {"put": ("put", {"key": b64key, "value": base64.b64encode((value or "").encode()).decode()}),
                           "get": ("range", {"key": b64key}), "del": ("deleterange", {"key": b64key})}[call]
        reply, alt = client.pool.call(lambda endpoint, deadline, dial: self._gateway(endpoint, method, payload, deadline, dial), self.timeout, trace)
        trace.alt = trace.alt or alt
        if call != "get":
            return None
        kvs = reply.get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")).decode("utf-8", errors="replace") if kvs else None

    def etcd_once(self, client, trace, seq):
        """A put then a get of the client's key (each call may fail over on its own, as an etcd client's would)."""
        key = self.etcd_key(client.index)
        value = "%d %s" % (seq, now_iso())
        self.etcd_call(client, trace, "put", key, value)
        got = self.etcd_call(client, trace, "get", key)
        if got != value:
            text = "etcd get returned %r, expected %r" % (got, value)
            raise RequestFailed(text, reason_of(text))

    def etcd_cleanup(self):
        """Delete the probe keys: one bounded call per etcd client that got an answer at least once."""
        for client in self.clients:
            if client.kind != "etcd" or not client.answered:
                continue
            try:
                self.etcd_call(client, Trace(), "del", self.etcd_key(client.index))
            except (RequestFailed, OSError, ssl.SSLError, ValueError, subprocess.SubprocessError):
                pass

    def worker(self, client):
        once = {"old": self.old_once, "current": self.current_once, "etcd": self.etcd_once}[client.kind]
        seq = 0
        while not self.budget.stop.is_set():
            if not self.budget.take():
                break
            seq += 1
            trace = Trace()
            err = reason = None
            try:
                once(client, trace, seq)
            except RequestFailed as exc:
                err, reason = exc.error, exc.reason
            except (OSError, ssl.SSLError, ValueError, subprocess.SubprocessError) as exc:
                err = error_text(exc)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                err = "unexpected " + error_text(exc)
            if err is None:
                client.answered += 1
                target = trace.server
            else:
                target = trace.tried[-1] if trace.tried else client.labels[client.pool.current]
            self.stats.record(client.kind, target, err, trace.alt, trace=trace, reason=reason, seq=seq)
            self.budget.stop.wait(self.args.interval)

    def make_clients(self):
        """One logical client per kind over all its servers; with --pin one per kind and server (no failover)."""
        for endpoint in self.targets:
            endpoint.label = "%s:%d" % (endpoint.host, endpoint.port)
        for endpoint in self.etcd:
            endpoint.label = "https://%s:%d" % (endpoint.host, endpoint.port)
        clients = []
        if self.args.pin:
            for endpoint in self.targets:
                clients += [Client("old", [endpoint], 0), Client("current", [endpoint], 0)]
            clients += [Client("etcd", [endpoint], index) for index, endpoint in enumerate(self.etcd)]
        else:
            if self.targets:
                clients += [Client("old", self.targets, 0), Client("current", self.targets, 0)]
            if self.etcd:
                clients.append(Client("etcd", self.etcd, 0))
        return clients

    def run(self, out):
        start_wall, start_mono = time.time(), time.monotonic()
        self.stats = Stats(start_wall, start_mono)
        self.clients = self.make_clients()
        for client in self.clients:
            self.stats.add_client(client, "pin" if self.args.pin else "failover")
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
            # each worker finishes at most one request (HTTP: one --timeout over all servers; etcd: two such calls,
            # etcdctl: each attempt's process gets what is left of the call's --timeout + 3 s)
            join_deadline = time.monotonic() + 2 * self.timeout + 8
            for thread in threads:
                thread.join(max(0.0, join_deadline - time.monotonic()))
            stuck = [thread.name for thread in threads if thread.is_alive()]
            self.stats.flush(jsonl, round(time.monotonic() - start_mono, 3), requests_log)
        if self.etcd:
            self.etcd_cleanup()
        return self.summary(start_wall, time.monotonic() - start_mono, stuck)

    def summary(self, start_wall, duration, stuck):
        kinds = {}
        first = last = None
        total_ok = total_fail = total_failovers = 0
        with self.stats.lock:
            for (kind, target) in self.stats.order:
                row = dict(self.stats.totals[(kind, target)])
                meta = self.stats.kinds.get(kind, {})
                entry = kinds.get(kind)
                if entry is None:
                    entry = kinds[kind] = {"ok": 0, "fail": 0, "requests": 0, "ok_alt_chain": 0, "mode": meta.get("mode"),
                                           "servers": list(meta.get("servers", [])), "failovers": meta.get("failovers", 0),
                                           "ok_after_failover": meta.get("ok_after_failover", 0),
                                           "failure_reasons": dict(meta.get("failure_reasons", {})),
                                           "failover_reasons": dict(meta.get("failover_reasons", {})), "targets": {}}
                    total_failovers += entry["failovers"]
                entry["ok"] += row["ok"]
                entry["ok_alt_chain"] += row["ok_alt_chain"]
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
            "failovers": total_failovers,
            "first_failure": first,
            "last_failure": last,
            "kinds": kinds,
            "path": self.path,
            "old_ca_sha256": self.old_ca_sha256,
            "current_ca_file": self.args.current_ca_file,
            "current_ca_changes": self.ca_changes,
            "current_reload_errors": self.current.reload_errors if self.current else 0,
            "current_last_reload_error": self.current.last_reload_error if self.current else None,
            "etcd_mode": self.args.etcd_mode if self.etcd else None,
            "alt_chains": ALT_CHAINS_SUPPORTED and not self.args.openssl_only,
            "stuck_threads": stuck,
            "settings": {"interval": self.args.interval, "duration": self.args.duration, "max_requests": self.args.max_requests,
                         "timeout": self.timeout, "targets": [e.label for e in self.targets], "etcd_endpoints": [e.label for e in self.etcd],
                         "netns": self.args.netns, "pin": bool(self.args.pin)},
        }
        return summary


def summary_line(summary):
    """One line: per kind ok/fail/failovers (never folded into ok), the top failure reasons, the first failure."""
    parts = []
    reasons = []
    for kind in KINDS:
        entry = summary["kinds"].get(kind)
        if entry:
            alt = " (%d via another chain)" % entry["ok_alt_chain"] if entry.get("ok_alt_chain") else ""
            failover = ""
            if entry.get("failovers"):
                failover = " [%d failovers, %d ok after failover]" % (entry["failovers"], entry.get("ok_after_failover", 0))
            elif entry.get("mode") == "failover" and len(entry.get("servers") or []) > 1:
                failover = " [0 failovers]"
            parts.append("%s %d ok%s/%d fail%s" % (kind, entry["ok"], alt, entry["fail"], failover))
            top = sorted((entry.get("failure_reasons") or {}).items(), key=lambda item: (-item[1], item[0]))[:2]
            reasons += ["%s %dx %s" % (kind, count, reason) for reason, count in top]
    line = "probe: %s in %.1fs (stop: %s), %d requests, %d failures, %d failovers" % (
        ", ".join(parts), summary["duration"], summary["stop_reason"], summary["requests"], summary["failures"], summary.get("failovers", 0))
    if reasons:
        line += "; failure reasons: " + "; ".join(reasons)
    if summary.get("first_failure"):
        failure = summary["first_failure"]
        line += "; first failure at +%.1fs %s %s: %s" % (failure["elapsed"], failure["kind"], failure["target"], failure["error"])
    return line


def failing_kinds(summary, kinds):
    return [kind for kind in kinds if summary["kinds"].get(kind, {}).get("fail", 0) > 0]


# ---------------------------------------------------------------------------------------------
# CLI


def add_run_options(parser):
    parser.add_argument("--out", required=True, help="output directory (probe.jsonl, summary.json; 'stop' file ends the run)")
    parser.add_argument("--targets", default="", help="comma list of host:port served with TLS (k3s 6443, rke2 9345)")
    parser.add_argument("--old-ca", help="pre-rotation CA file, read once at start (the old client trusts only this)")
    parser.add_argument("--current-ca-file", help="CA bundle file of the current client, re-read every second")
    parser.add_argument("--client-cert", help="client certificate (e.g. server/tls/client-admin.crt); old client: as at start")
    parser.add_argument("--client-key", help="its key")
    parser.add_argument("--lab-state", help="lab state.json (tests/lab/kubepki_lab.py): add every server as a target (and etcd endpoint)")
    parser.add_argument("--lab-port", type=int, default=6443, help="port of the lab targets (k3s 6443, rke2 9345; 0: none)")
    parser.add_argument("--lab-etcd-port", type=int, default=0, help="with --lab-state: add https://<server>:PORT etcd endpoints (2379; 0: none)")
    parser.add_argument("--path", help="HTTP path (default /readyz with a client certificate, else /cacerts)")
    parser.add_argument("--server-name", help="name to verify and send as SNI instead of the target host")
    parser.add_argument("--no-check-hostname", action="store_true", help="verify the chain only, not the name")
    parser.add_argument("--openssl-only", action="store_true",
                        help="verify like an OpenSSL client: no Go-style retry over other paths through the certificates the server sent")
    parser.add_argument("--no-partial-chain", action="store_true",
                        help="require a self-signed trust anchor (default: any CA in the trust file anchors, as in Go clients)")
    parser.add_argument("--etcd-endpoints", default="", help="comma list of https://ip:2379 etcd client URLs")
    parser.add_argument("--etcd-cacert", help="etcd server CA file (re-read every second)")
    parser.add_argument("--etcd-cert", help="etcd client certificate (re-read every second)")
    parser.add_argument("--etcd-key", help="etcd client key")
    parser.add_argument("--etcd-mode", choices=("gateway", "etcdctl"), default="gateway", help="v3 JSON gateway (default) or etcdctl")
    parser.add_argument("--etcdctl", default="etcdctl", help="etcdctl binary for --etcd-mode etcdctl")
    parser.add_argument("--etcd-prefix", default="/kubepki-probe/", help="key prefix (the probe's keys are deleted at exit)")
    parser.add_argument("--interval", type=float, default=0.2,
                        help="pause between two requests of one client (s): of one kind; with --pin of one kind to one target")
    parser.add_argument("--pin", action="store_true",
                        help="one client per kind and target, no failover (the probe's behaviour before failover clients)")
    parser.add_argument("--duration", type=float, default=300.0, help="stop after this many seconds")
    parser.add_argument("--max-requests", type=int, default=100000, help="stop after this many requests (all kinds together)")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-request timeout (s)")
    parser.add_argument("--allow-net", default=DEFAULT_ALLOW, help="comma list of networks the probe may talk to (default %(default)s)")
    parser.add_argument("--netns", help="run inside this network namespace (re-exec under 'ip netns exec')")
    parser.add_argument("--fail-on", default="", help="comma list of kinds (old,current,etcd): exit 1 if any of them failed")


def check_run_args(args):
    if not 0 < args.duration <= 86400:
        raise ProbeError("--duration must be in (0, 86400]")
    if not 0 < args.max_requests <= 10000000:
        raise ProbeError("--max-requests must be in [1, 10000000]")
    if not 0.0 <= args.interval <= 3600 or not 0 < args.timeout <= 60:
        raise ProbeError("--interval must be in [0, 3600] and --timeout in (0, 60]")
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
    if not ALT_CHAINS_SUPPORTED and not args.openssl_only:
        print("probe: warning: Python %d.%d cannot read the presented chain: verifying like OpenSSL, not like Go (see --openssl-only)"
              % sys.version_info[:2], file=sys.stderr, flush=True)
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
    parser = argparse.ArgumentParser(description="TLS/etcd traffic probe for the kubepki lab (old client, current client, etcd put/get)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_options(sub.add_parser("run", help="probe in the foreground until duration/max-requests/<out>/stop/SIGTERM"))
    start = sub.add_parser("start", help="run in the background (pid in <out>/probe.pid, output in <out>/probe.log)")
    add_run_options(start)
    start.add_argument("--start-timeout", type=float, default=15.0, help="wait this long for the probe to come up")
    stop = sub.add_parser("stop", help="create <out>/stop, wait, kill if needed; print the summary")
    stop.add_argument("--out", required=True)
    stop.add_argument("--timeout", type=float, default=30.0, help="wait this long before SIGTERM")
    stop.add_argument("--fail-on", default="", help="comma list of kinds: exit 1 if any of them failed")
    show = sub.add_parser("summary", help="print the one-line summary of a finished run")
    show.add_argument("--out", required=True)
    show.add_argument("--fail-on", default="", help="comma list of kinds: exit 1 if any of them failed")
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
