# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""health_gate: the /cacerts fetch against a real local HTTPS server, one attempt, and the polling main()."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import ssl
import stat
import sys
import threading

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
    build_ca_certificate,
    build_leaf_certificate,
    dump_certificates,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import (
    generate_private_key,
    serialize_private_key,
)
from ansible_collections.kubepki.certs.plugins.modules import health_gate

from ansible_collections.kubepki.certs.tests.unit.module_args import patch_module_args


# --- a local HTTPS server handing out a CA bundle, as k3s does on /cacerts ----------------------

def _ca(cn):
    key = generate_private_key("ecdsa-p256")
    cert = build_ca_certificate(subject_common_name=cn, subject_public_key=key.public_key(), issuer_certificate=None,
                                issuer_key=key, validity_days=30)
    return cert, key


def _write(path, data: bytes) -> str:
    with open(path, "wb") as handle:
        handle.write(data)
    return str(path)


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path != "/cacerts":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


class Served:
    """An HTTPS server on 127.0.0.1 whose serving certificate is issued by ``ca`` for ``ip``/``dns``."""

    def __init__(self, directory, name, ca, body, *, ip_addresses=("127.0.0.1",), dns_names=()):
        ca_cert, ca_key = ca
        key = generate_private_key("ecdsa-p256")
        leaf = build_leaf_certificate(subject_common_name="kube-apiserver", subject_public_key=key.public_key(),
                                      issuer_certificate=ca_cert, issuer_key=ca_key, validity_days=30,
                                      server_auth=True, client_auth=False, ip_addresses=ip_addresses,
                                      dns_names=dns_names)
        chain = _write(directory / (name + "-serving.crt"), dump_certificates([leaf, ca_cert]))
        key_file = _write(directory / (name + "-serving.key"), serialize_private_key(key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key_file)
        handler = type("Handler", (_Handler,), {"body": body})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = "https://127.0.0.1:%d/cacerts" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("health_gate")
    server_ca = _ca("k3s-server-ca@1700000000")
    other_ca = _ca("someone-else-ca")
    bundle = dump_certificates([server_ca[0]])
    good = Served(directory, "good", server_ca, bundle)
    wrong_name = Served(directory, "wrong-name", server_ca, bundle, ip_addresses=(), dns_names=("not-this-host",))
    yield {
        "bundle": bundle,
        "sha256": hashlib.sha256(bundle).hexdigest(),
        "ca_file": _write(directory / "server-ca.crt", bundle),
        "other_ca_file": _write(directory / "other-ca.crt", dump_certificates([other_ca[0]])),
        "good": good,
        "wrong_name": wrong_name,
    }
    good.close()
    wrong_name.close()


# --- fetch --------------------------------------------------------------------------------------

def test_fetch_returns_the_body_when_the_ca_verifies(pki):
    body, error = health_gate.fetch(pki["good"].url, pki["ca_file"], timeout=5)
    assert error is None
    assert body == pki["bundle"]


def test_fetch_untrusted_server_is_an_error_never_the_body(pki):
    body, error = health_gate.fetch(pki["good"].url, pki["other_ca_file"], timeout=5)
    assert body is None
    assert "CERTIFICATE_VERIFY_FAILED" in error
    assert "BEGIN CERTIFICATE" not in error
    assert len(error) <= 300


def test_fetch_name_mismatch_is_an_error(pki):
    body, error = health_gate.fetch(pki["wrong_name"].url, pki["ca_file"], timeout=5)
    assert body is None
    assert "CERTIFICATE_VERIFY_FAILED" in error and "mismatch" in error


def test_fetch_http_error_is_an_error(pki):
    body, error = health_gate.fetch(pki["good"].url.replace("/cacerts", "/nothing"), pki["ca_file"], timeout=5)
    assert (body, error) == (None, "Not Found")


def test_fetch_missing_ca_file_and_closed_port(pki, tmp_path):
    body, error = health_gate.fetch(pki["good"].url, str(tmp_path / "absent.crt"), timeout=5)
    assert body is None and "No such file or directory" in error
    closed = Served(tmp_path, "closed", _ca("short-lived"), b"x")
    url = closed.url
    closed.close()
    body, error = health_gate.fetch(url, pki["ca_file"], timeout=5)
    assert body is None and "refused" in error.lower()


# --- attempt ------------------------------------------------------------------------------------

NODES_READY = json.dumps({"items": [
    {"metadata": {"name": "s1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
    {"metadata": {"name": "s2"},
     "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "PLEG"}]}},
]})


# any existing executable stands in for <data-dir>/bin/kubectl: attempt() checks that the file exists
KUBECTL = [os.path.realpath(sys.executable), "--kubeconfig", "/etc/rancher/rke2/rke2.yaml"]


class FakeModule:
    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def run_command(self, argv):
        self.calls.append(list(argv))
        assert argv[:len(KUBECTL)] == KUBECTL
        return self.answers[" ".join(argv[len(KUBECTL):])]


def params(**overrides):
    result = {"readyz": True, "ready_nodes": [], "cacerts_url": None, "expected_cacerts_sha256": None,
              "timeout": 90}
    result.update(overrides)
    return result


def test_attempt_all_pass(pki):
    module = FakeModule({"get --raw /readyz": (0, "ok\n", ""),
                         "get nodes -o json": (0, NODES_READY, "")})
    problems = health_gate.attempt(module, KUBECTL, params(ready_nodes=["s1"], cacerts_url=pki["good"].url,
                                                           expected_cacerts_sha256=pki["sha256"].upper()),
                                   pki["ca_file"])
    assert problems == []
    assert module.calls == [KUBECTL + ["get", "--raw", "/readyz"], KUBECTL + ["get", "nodes", "-o", "json"]]


def test_attempt_missing_kubectl_is_a_retryable_problem(pki):
    module = FakeModule({})
    problems = health_gate.attempt(module, ["/nonexistent/rke2/bin/kubectl"] + KUBECTL[1:], params(), pki["ca_file"])
    assert problems == ["kubectl: /nonexistent/rke2/bin/kubectl does not exist (yet)"]
    assert module.calls == []


def test_attempt_every_failure_named(pki):
    module = FakeModule({"get --raw /readyz": (1, "", "Error from server (InternalError)\n"),
                         "get nodes -o json": (0, NODES_READY, "")})
    other = hashlib.sha256(b"the old bundle").hexdigest()
    problems = health_gate.attempt(module, KUBECTL, params(ready_nodes=["s1", "s2", "s3"],
                                                           cacerts_url=pki["good"].url,
                                                           expected_cacerts_sha256=other),
                                   pki["ca_file"])
    assert problems == [
        "readyz: rc 1: Error from server (InternalError)",
        "s2: not Ready (Ready=False KubeletNotReady PLEG)",
        "s3: not registered",
        "cacerts: serves a CA bundle with sha256 %s, expected %s (still the old CAs?)"
        % (pki["sha256"][:16], other[:16]),
    ]


def test_attempt_untrusted_cacerts_and_nothing_else_asked(pki):
    module = FakeModule({})
    problems = health_gate.attempt(module, KUBECTL, params(readyz=False, cacerts_url=pki["good"].url,
                                                           expected_cacerts_sha256=pki["sha256"]),
                                   pki["other_ca_file"])
    assert module.calls == []
    assert len(problems) == 1
    assert problems[0].startswith("cacerts: [SSL: CERTIFICATE_VERIFY_FAILED]")


# --- main ---------------------------------------------------------------------------------------

FAKE_K3S = """#!/bin/sh
# k3s stand-in: 'k3s kubectl get --raw /readyz' and 'k3s kubectl get nodes -o json'
echo "$*" >> "{log}"
count=$(wc -l < "{log}")
if [ "$1 $2 $3 $4" = "kubectl get --raw /readyz" ]; then
    if [ "$count" -le {readyz_failures} ]; then
        echo "The connection to the server 127.0.0.1:6443 was refused" >&2
        exit 1
    fi
    echo ok
    exit 0
fi
if [ "$1 $2 $3 $4 $5" = "kubectl get nodes -o json" ]; then
    cat "{nodes}"
    exit 0
fi
echo "unexpected: $*" >&2
exit 2
"""


def fake_k3s(tmp_path, monkeypatch, *, readyz_failures=0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "k3s.log"
    log.write_text("")
    nodes = tmp_path / "nodes.json"
    nodes.write_text(NODES_READY)
    script = bin_dir / "k3s"
    script.write_text(FAKE_K3S.format(log=log, nodes=nodes, readyz_failures=readyz_failures))
    os.chmod(str(script), stat.S_IRWXU)
    monkeypatch.setenv("PATH", "%s:%s" % (bin_dir, os.environ.get("PATH", "/usr/bin:/bin")))
    return log


def run_main(args, capsys):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as caught:
            health_gate.main()
    out = capsys.readouterr().out
    return caught.value.code, json.loads(out)


def test_main_passes_with_the_default_ca_file(pki, tmp_path, monkeypatch, capsys):
    log = fake_k3s(tmp_path, monkeypatch)
    data_dir = tmp_path / "k3s"
    (data_dir / "server" / "tls").mkdir(parents=True)
    _write(data_dir / "server" / "tls" / "server-ca.crt", pki["bundle"])
    code, result = run_main({"distribution": "k3s", "data_dir": str(data_dir), "ready_nodes": ["s1"],
                             "cacerts_url": pki["good"].url, "expected_cacerts_sha256": pki["sha256"],
                             "timeout": 10, "interval": 0.1}, capsys)
    assert code == 0
    assert not result.get("failed")
    assert result["changed"] is False
    assert result["attempts"] == 1 and result["problems"] == []
    assert log.read_text().splitlines() == ["kubectl get --raw /readyz", "kubectl get nodes -o json"]


def test_main_retries_until_ready(pki, tmp_path, monkeypatch, capsys):
    log = fake_k3s(tmp_path, monkeypatch, readyz_failures=2)
    code, result = run_main({"distribution": "k3s", "cacerts_url": pki["good"].url,
                             "cacerts_ca_file": pki["ca_file"], "timeout": 20, "interval": 0.05}, capsys)
    assert code == 0
    assert result["attempts"] == 3 and result["problems"] == []
    assert log.read_text().splitlines() == ["kubectl get --raw /readyz"] * 3


def test_main_fails_after_timeout_naming_each_problem(pki, tmp_path, monkeypatch, capsys):
    fake_k3s(tmp_path, monkeypatch, readyz_failures=100)
    code, result = run_main({"distribution": "k3s", "ready_nodes": ["s1", "s9"], "cacerts_url": pki["good"].url,
                             "cacerts_ca_file": pki["other_ca_file"], "expected_cacerts_sha256": pki["sha256"],
                             "timeout": 0, "interval": 0.05}, capsys)
    assert code == 1
    assert result["failed"] is True
    assert result["attempts"] == 1
    assert result["problems"][:2] == ["readyz: rc 1: The connection to the server 127.0.0.1:6443 was refused",
                                      "s9: not registered"]
    assert result["problems"][2].startswith("cacerts: [SSL: CERTIFICATE_VERIFY_FAILED]")
    assert len(result["problems"]) == 3
    assert result["msg"].startswith("health gate failed after 0 s (1 attempts): readyz: rc 1: ")
    assert "s9: not registered" in result["msg"]
    assert "BEGIN CERTIFICATE" not in json.dumps(result)
