# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nginx (OpenSSL) as a fake kube-apiserver on leaves of the CA set; curl and kubectl as its clients.

nginx serves leaf + CAs above it (issued under server-ca; ``ca`` for kubeadm), demands client certs
verified against the client CA's ``.crt`` bundle (``ssl_verify_depth 3``), and fakes ``/version`` and
``/healthz``. kubectl uses a kubeconfig with embedded certificate-authority-data / client-certificate-data
(leaf only, O=system:masters) / client-key-data.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from interop_lib import FAKE_VERSION, find_tool, port_open, run, wait_until, write_text

NGINX_CONF = """
{user}
daemon off;
master_process on;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {work}/access.log;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_client_certificate {client_ca};
        ssl_verify_client on;
        ssl_verify_depth 3;
        location = /version {{
            default_type application/json;
            return 200 '{version}';
        }}
        location = /healthz {{
            default_type text/plain;
            return 200 'ok';
        }}
        location = /whoami {{
            default_type text/plain;
            return 200 '$ssl_client_verify $ssl_client_s_dn';
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


class FakeApiserver:
    def __init__(self, scenario, openssl, processes, port, work):
        self.scenario = scenario
        self.port = port
        self.work = work
        server_ca, client_ca = scenario.role("server"), scenario.role("client")
        self.server_ca, self.client_ca = server_ca, client_ca
        leaf, self.server_key = openssl.leaf(work, "apiserver", issuer_cert=scenario.ca_alone(server_ca),
                                             issuer_key=scenario.ca_key(server_ca), cn="kube-apiserver", server=True,
                                             client=False, dns=("localhost", "kubernetes", "kubernetes.default.svc"),
                                             ips=("127.0.0.1",))
        self.server_chain = scenario.serving_chain(leaf, server_ca)
        self.client_cert, self.client_key = openssl.leaf(work, "admin", issuer_cert=scenario.ca_alone(client_ca),
                                                         issuer_key=scenario.ca_key(client_ca), cn="kubernetes-admin",
                                                         orgs=("system:masters",))
        conf = NGINX_CONF.format(user="user root;" if os.geteuid() == 0 else "", work=work, port=port,
                                 chain=self.server_chain, key=self.server_key, client_ca=scenario.ca_bundle(client_ca),
                                 version=json.dumps(FAKE_VERSION, separators=(",", ":")))
        self.conf = write_text(os.path.join(work, "nginx.conf"), conf)
        nginx = find_tool("nginx")
        test = run([nginx, "-t", "-p", work, "-e", os.path.join(work, "error.log"), "-c", self.conf], timeout=30)
        assert test.returncode == 0, "nginx -t rejected the config:\n%s" % test.stderr
        processes.start("nginx", [nginx, "-p", work, "-e", os.path.join(work, "error.log"), "-c", self.conf])
        wait_until(lambda: port_open(port), timeout=15, what="nginx listening on %d" % port, processes=processes)

    def url(self, path):
        return "https://127.0.0.1:%d%s" % (self.port, path)

    def curl(self, path, *, cacert=None, cert=None, key=None):
        """(exit code, http code, body)."""
        cmd = [find_tool("curl"), "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}",
               "--cacert", cacert or self.scenario.ca_bundle(self.server_ca)]
        if cert:
            cmd += ["--cert", cert, "--key", key]
        result = run(cmd + [self.url(path)], timeout=20)
        body, _sep, code = result.stdout.rpartition("\n")
        return result.returncode, code, body + result.stderr


def _b64(path):
    with open(path, "rb") as handle:
        return base64.b64encode(handle.read()).decode("ascii")


def _kubeconfig(path, server, ca_file, cert_file, key_file):
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "interop", "preferences": {},
        "clusters": [{"name": "interop", "cluster": {"server": server, "certificate-authority-data": _b64(ca_file)}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": _b64(cert_file),
                                             "client-key-data": _b64(key_file)}}],
        "contexts": [{"name": "interop", "context": {"cluster": "interop", "user": "admin"}}],
    }
    return write_text(path, json.dumps(config, indent=1), mode=0o600)


@pytest.fixture
def apiserver(scenario, openssl, processes, free_port, tmp_path):
    return FakeApiserver(scenario, openssl, processes, free_port(), str(tmp_path))


@pytest.mark.scenarios("k3s-ec", "rke2-rsa-pkcs8-constrained", "kubeadm-rsa", "k3s-defaults-rsa4096",
                       "rke2-supplied-intermediate")
def test_nginx_mtls_with_curl(apiserver, openssl, tmp_path):
    fake = apiserver
    rc, code, body = fake.curl("/healthz", cert=fake.client_cert, key=fake.client_key)
    assert (rc, code, body) == (0, "200", "ok"), body
    rc, code, body = fake.curl("/whoami", cert=fake.client_cert, key=fake.client_key)
    assert rc == 0 and code == "200" and body.startswith("SUCCESS "), body
    assert "O=system:masters" in body and "CN=kubernetes-admin" in body, body
    # No client certificate → 400 from nginx.
    rc, code, body = fake.curl("/healthz")
    assert code == "400" and "No required SSL certificate was sent" in body, (rc, code, body)
    # Client certificate of an unrelated CA → 400.
    work = str(tmp_path)
    foreign_cert, foreign_key = openssl.self_signed_ca(work, "foreign-ca", cn="foreign-client-ca")
    stranger = openssl.leaf(work, "stranger", issuer_cert=foreign_cert, issuer_key=foreign_key, cn="kubernetes-admin",
                            orgs=("system:masters",))
    rc, code, body = fake.curl("/healthz", cert=stranger[0], key=stranger[1])
    assert code == "400" and "SSL certificate error" in body, (rc, code, body)
    # A client trusting another CA refuses the server (curl exit 60: peer certificate cannot be authenticated).
    rc, code, body = fake.curl("/healthz", cacert=foreign_cert, cert=fake.client_cert, key=fake.client_key)
    assert rc == 60, (rc, code, body)
    if fake.scenario.rancher:
        # A leaf of the sibling server-ca, sent WITHOUT its chain, is not a client of client-ca. (curl's OpenSSL
        # auto-completes the client chain from --cacert, so trust only the root here to send the bare leaf.)
        # NB: sent WITH server-ca.pem it is accepted: every <ca>.crt bundle makes the shared intermediate and
        # root trust anchors, exactly like k3s's own client-ca.crt.
        sibling = openssl.leaf(work, "sibling", issuer_cert=fake.scenario.ca_alone("server-ca"),
                               issuer_key=fake.scenario.ca_key("server-ca"), cn="kubernetes-admin")
        rc, code, body = fake.curl("/healthz", cacert=fake.scenario.root_file(), cert=sibling[0], key=sibling[1])
        assert code == "400", (rc, code, body)
        rc, code, body = fake.curl("/healthz", cacert=fake.scenario.root_file(), cert=fake.client_cert,
                                   key=fake.client_key)
        assert (rc, code, body) == (0, "200", "ok"), "a client-ca leaf sent alone must be accepted: %s" % body


@pytest.mark.scenarios("k3s-ec", "rke2-rsa-pkcs8-constrained", "kubeadm-rsa")
def test_kubectl_embedded_kubeconfig(apiserver, openssl, tmp_path):
    fake = apiserver
    kubectl = find_tool("kubectl")
    work = str(tmp_path)
    kubeconfig = _kubeconfig(os.path.join(work, "admin.kubeconfig"), fake.url(""),
                             fake.scenario.ca_bundle(fake.server_ca), fake.client_cert, fake.client_key)
    env = dict(os.environ, HOME=work, KUBECONFIG=kubeconfig)
    env.pop("KUBERNETES_SERVICE_HOST", None)
    base = [kubectl, "--kubeconfig", kubeconfig, "--cache-dir", os.path.join(work, "kube-cache")]

    healthz = run(base + ["get", "--raw", "/healthz"], env=env, timeout=60)
    assert healthz.returncode == 0 and healthz.stdout.strip() == "ok", healthz.stdout + healthz.stderr
    version = run(base + ["version", "-o", "json"], env=env, timeout=60)
    assert version.returncode == 0, version.stdout + version.stderr
    report = json.loads(version.stdout)
    assert report["serverVersion"]["gitVersion"] == FAKE_VERSION["gitVersion"], report
    assert "clientVersion" in report, report

    # The same kubeconfig with a foreign CA: kubectl must refuse the server.
    foreign_cert, _key = openssl.self_signed_ca(work, "foreign-ca", cn="foreign-server-ca")
    distrust = _kubeconfig(os.path.join(work, "distrust.kubeconfig"), fake.url(""), foreign_cert, fake.client_cert,
                           fake.client_key)
    refused = run([kubectl, "--kubeconfig", distrust, "--cache-dir", os.path.join(work, "kube-cache2"),
                   "--request-timeout", "10s", "get", "--raw", "/healthz"], env=dict(env, KUBECONFIG=distrust),
                  timeout=60)
    assert refused.returncode != 0, "kubectl trusted the server with a foreign certificate-authority-data"
    assert "x509" in refused.stderr or "certificate" in refused.stderr, refused.stderr
