# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests of the k3s/RKE2 lab double (tests/lab/double/k3s_double.py), CI-fast, no network namespaces.

Every "host" is a private root (KUBEPKI_DOUBLE_ROOT) with its own loopback address (127.X.Y.Z), so
servers, agents and their real etcd members run side by side on this machine. CA material for the
rotations is made with the openssl CLI the way contrib/util/rotate-default-ca-certs.sh does it,
never with the collection's code. The double runs under Debian's /usr/bin/python3.
"""

import hashlib
import json
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DOUBLE = os.path.join(HERE, "double", "k3s_double.py")
PYTHON = "/usr/bin/python3"
CA_TYPES = ("client", "server", "request-header", "etcd/peer", "etcd/server")
V3_CA = """[req]
distinguished_name = dn
[dn]
[v3_ca]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign
[v3_ca_client_only]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign
extendedKeyUsage = clientAuth
"""
MISSING = [tool for tool in ("etcd", "etcdctl", "openssl") if shutil.which(tool) is None]


@pytest.fixture(autouse=True, scope="module")
def _tools_installed(double_python):
    """scripts/bootstrap.sh installs these; a missing one fails the tests, naming the package (double_python: conftest.py)."""
    assert double_python == PYTHON
    assert not MISSING, "needs %s (Debian etcd-server, etcd-client, openssl; scripts/bootstrap.sh)" % ", ".join(MISSING)


def _free_subnet():
    """A 127.A.B.0/24 loopback block where nothing listens on the ports the double uses."""
    for attempt in range(50):
        del attempt
        prefix = "127.%d.%d" % (random.randint(100, 250), random.randint(1, 250))
        busy = False
        for host in range(2, 8):
            for port in (6443, 9345, 2379, 2380):
                with socket.socket() as sock:
                    sock.settimeout(0.05)
                    if sock.connect_ex(("%s.%d" % (prefix, host), port)) == 0:
                        busy = True
        if not busy:
            return prefix
    raise RuntimeError("no free loopback block")


def openssl(*args, cwd=None):
    result = subprocess.run(["openssl"] + list(args), check=False, capture_output=True, text=True, cwd=cwd, timeout=60)
    assert result.returncode == 0, "openssl %s: %s" % (" ".join(args), result.stderr)
    return result.stdout


def sha256_file(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def der_sha256(pem_path):
    der = subprocess.run(["openssl", "x509", "-in", pem_path, "-outform", "DER"], check=True, capture_output=True, timeout=30).stdout
    return hashlib.sha256(der).hexdigest()


def _name_cn(pem_path, name_flag):
    """The CN of the certificate's subject (``-subject``) or issuer (``-issuer``), as openssl prints it; "" if none."""
    out = openssl("x509", "-in", pem_path, "-noout", name_flag, "-nameopt", "multiline")
    for line in out.splitlines():
        if "commonName" in line:
            return line.split("=", 1)[1].strip()
    return ""


def subject_cn(pem_path):
    return _name_cn(pem_path, "-subject")


def issuer_cn(pem_path):
    return _name_cn(pem_path, "-issuer")


class Node:
    """One lab "host": a private root, a loopback address, the double's service wrapper."""

    def __init__(self, lab, name, address, program="k3s", role="server"):
        self.lab = lab
        self.name = name
        self.address = address
        self.program = program
        self.role = role
        self.root = os.path.join(lab.base, name)
        self.etc = os.path.join(self.root, "etc/rancher", program)
        self.data = os.path.join(self.root, "var/lib/rancher", program)
        if program == "k3s":
            self.unit = "k3s" if role == "server" else "k3s-agent"
        else:
            self.unit = "rke2-server" if role == "server" else "rke2-agent"
        os.makedirs(self.etc, exist_ok=True)

    @property
    def tls(self):
        return os.path.join(self.data, "server", "tls")

    @property
    def log(self):
        return os.path.join(self.data, "lab", self.unit + ".log")

    def env(self, extra=None):
        env = dict(os.environ, KUBEPKI_DOUBLE_ROOT=self.root, KUBEPKI_DOUBLE_PROGRAM=self.program, KUBEPKI_DOUBLE_AGENT_TIMEOUT="6",
                   KUBEPKI_DOUBLE_START_TIMEOUT="60", KUBEPKI_DOUBLE_STALE="6", KUBEPKI_DOUBLE_HEARTBEAT="1")
        env.pop("KUBECONFIG", None)
        for key in list(env):
            if key.startswith(("K3S_", "RKE2_")):
                del env[key]
        env.update(extra or {})
        return env

    def config(self, **keys):
        data = {"node-name": self.name, "node-ip": self.address, "bind-address": self.address, "lab-datastore": self.lab.datastore}
        data.update(keys)
        with open(os.path.join(self.etc, "config.yaml"), "w", encoding="utf-8") as handle:
            for key, value in data.items():
                handle.write("%s: %s\n" % (key, json.dumps(value)))

    def run(self, *args, env=None, timeout=120):
        cmd = [PYTHON, DOUBLE] + list(args)
        return subprocess.run(cmd, check=False, capture_output=True, text=True, env=self.env(env), timeout=timeout)

    def kubectl(self, *args, env=None, timeout=120):
        """The node's admin kubectl: `k3s kubectl`; RKE2 has none, it stages <data-dir>/bin/kubectl (kubeconfig rke2.yaml)."""
        if self.program == "k3s":
            return self.run("kubectl", *args, env=env, timeout=timeout)
        cmd = [os.path.join(self.data, "bin", "kubectl"), "--kubeconfig", os.path.join(self.etc, "rke2.yaml")] + list(args)
        return subprocess.run(cmd, check=False, capture_output=True, text=True, env=self.env(env), timeout=timeout)

    def service(self, action, env=None):
        return self.run("lab-service", self.unit, action, env=env)

    def token(self):
        with open(os.path.join(self.data, "server", "token"), encoding="utf-8") as handle:
            return handle.read().strip()

    def read_log(self):
        try:
            with open(self.log, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def url(self):
        return "https://%s:%d" % (self.address, 9345 if self.program == "rke2" else 6443)


class Lab:
    def __init__(self, base):
        self.base = base
        self.prefix = _free_subnet()
        self.datastore = os.path.join(base, "datastore")
        self.nodes = []
        self.counter = 1

    def node(self, name, program="k3s", role="server"):
        self.counter += 1
        node = Node(self, name, "%s.%d" % (self.prefix, self.counter), program, role)
        self.nodes.append(node)
        return node

    def stop_all(self):
        for node in reversed(self.nodes):
            node.service("stop")


def lab_fixture(prefix):
    """A module-scoped ``lab`` fixture: a Lab in a fresh temporary directory named after ``prefix``; afterwards
    every node is stopped and the directory removed."""
    @pytest.fixture(scope="module", name="lab")
    def a_lab():
        base = tempfile.mkdtemp(prefix=prefix)
        the_lab = Lab(base)
        try:
            yield the_lab
        finally:
            the_lab.stop_all()
            shutil.rmtree(base, ignore_errors=True)
    return a_lab


def diagnostics(node):
    etcd_log = os.path.join(node.data, "lab", "etcd.log")
    tail = ""
    if os.path.exists(etcd_log):
        with open(etcd_log, encoding="utf-8", errors="replace") as handle:
            tail = "".join(handle.readlines()[-15:])
    return "%s\n--- etcd.log tail:\n%s" % (node.read_log()[-3000:], tail)


def started(node, env=None):
    result = node.service("start", env=env)
    assert result.returncode == 0, "%s: %s%s\n%s" % (node.name, result.stdout, result.stderr, diagnostics(node))
    return result


def restarted(node):
    result = node.service("restart")
    assert result.returncode == 0, "%s: %s%s\n%s" % (node.name, result.stdout, result.stderr, diagnostics(node))


def get_nodes(server):
    result = server.kubectl("get", "nodes", "-o", "json")
    assert result.returncode == 0, result.stderr
    return {item["metadata"]["name"]: item["status"]["conditions"][0]["status"] for item in json.loads(result.stdout)["items"]}


def wait_ready(server, name, want="True", timeout=20):
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = get_nodes(server).get(name)
        if state == want:
            return
        time.sleep(0.5)
    raise AssertionError("node %s is %s, wanted Ready=%s" % (name, state, want))


def etcdctl(node, *args, cert=True):
    etcd = os.path.join(node.tls, "etcd")
    cmd = ["etcdctl", "--endpoints=https://%s:2379" % node.address, "--cacert=%s" % os.path.join(etcd, "server-ca.crt"), "--dial-timeout=3s",
           "--command-timeout=5s"]
    if cert:
        cmd += ["--cert=%s" % os.path.join(etcd, "client.crt"), "--key=%s" % os.path.join(etcd, "client.key")]
    # etcdctl prints "endpoint health" results on stderr: merge the streams.
    return subprocess.run(cmd + list(args), check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30,
                          env=dict(os.environ, ETCDCTL_API="3"))


def make_ca(work, name, issuer=None, ext="v3_ca", key_type="ec"):
    """openssl CA: returns (crt, key); self-signed when ``issuer`` is None, else signed by issuer=(crt, key)."""
    conf = os.path.join(work, "v3.cnf")
    if not os.path.exists(conf):
        with open(conf, "w", encoding="utf-8") as handle:
            handle.write(V3_CA)
    crt, key = os.path.join(work, name + ".pem"), os.path.join(work, name + ".key")
    if key_type == "rsa":
        openssl("genrsa", "-traditional", "-out", key, "2048")
    else:
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    subj = "/CN=%s@%d" % (name, int(time.time()))
    if issuer is None:
        openssl("req", "-x509", "-new", "-key", key, "-sha256", "-days", "3650", "-subj", subj, "-config", conf, "-extensions", ext, "-out", crt)
    else:
        csr = os.path.join(work, name + ".csr")
        openssl("req", "-new", "-key", key, "-subj", subj, "-config", conf, "-out", csr)
        openssl("x509", "-req", "-in", csr, "-CA", issuer[0], "-CAkey", issuer[1], "-set_serial", "0x%x" % random.getrandbits(63), "-days", "3650",
                "-sha256", "-extfile", conf, "-extensions", ext, "-out", crt)
    return crt, key


def concat(target, *parts):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                out.write(handle.read())
    return target


def stage_rotation(server, stage, product="k3s", cross_signed=True, keep_service_key=True, types=CA_TYPES):
    """rotate-default-ca-certs.sh with the openssl CLI: new root (self-signed + cross-signed by the old root), new intermediate, bundle."""
    work = tempfile.mkdtemp(dir=stage)
    conf = os.path.join(work, "v3.cnf")
    with open(conf, "w", encoding="utf-8") as handle:
        handle.write(V3_CA)
    stamp = int(time.time())
    for ca_type in types:
        old_crt = os.path.join(server.tls, ca_type + "-ca.crt")
        old_key = os.path.join(server.tls, ca_type + "-ca.key")
        flat = ca_type.replace("/", "-")
        root_key, root_ss, root_xs = (os.path.join(work, flat + suffix) for suffix in ("-root.key", "-root-ssigned.pem", "-root-xsigned.pem"))
        inter_key, inter_pem, csr = (os.path.join(work, flat + suffix) for suffix in ("-ca.key", "-ca.pem", ".csr"))
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", root_key)
        subj = "/CN=%s-%s-root@%d" % (product, flat, stamp)
        openssl("req", "-x509", "-new", "-key", root_key, "-sha256", "-days", "7300", "-subj", subj, "-config", conf, "-extensions", "v3_ca", "-out", root_ss)
        openssl("req", "-new", "-key", root_key, "-subj", subj, "-config", conf, "-out", csr)
        openssl("x509", "-req", "-in", csr, "-CA", old_crt, "-CAkey", old_key, "-set_serial", "0x%x" % random.getrandbits(63), "-days", "7300",
                "-sha256", "-extfile", conf, "-extensions", "v3_ca", "-out", root_xs)
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", inter_key)
        openssl("req", "-new", "-key", inter_key, "-subj", "/CN=%s-%s-ca@%d" % (product, flat, stamp), "-config", conf, "-out", csr)
        openssl("x509", "-req", "-in", csr, "-CA", root_ss, "-CAkey", root_key, "-set_serial", "0x%x" % random.getrandbits(63), "-days", "7300",
                "-sha256", "-extfile", conf, "-extensions", "v3_ca", "-out", inter_pem)
        parts = [inter_pem, root_ss] + ([root_xs, old_crt] if cross_signed else [])
        target = os.path.join(stage, "tls", ca_type + "-ca")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target + ".crt", "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    out.write(handle.read())
        with open(target + ".key", "wb") as out:
            for part in (inter_key, root_key):
                with open(part, "rb") as handle:
                    out.write(handle.read())
    new_service = os.path.join(work, "service.key")
    openssl("genrsa", "-traditional", "-out", new_service, "2048")
    with open(os.path.join(stage, "tls", "service.key"), "wb") as out:
        with open(new_service, "rb") as handle:
            out.write(handle.read())
        if keep_service_key:
            with open(os.path.join(server.tls, "service.key"), "rb") as handle:
                out.write(handle.read())
    return work


lab = lab_fixture("kubepki-double-")


@pytest.fixture(scope="module")
def cluster(lab):
    """server1 (cluster-init) + server2 (joined, real 2-member etcd) + agent1; started lazily by the tests."""
    server1 = lab.node("server1")
    server1.config(**{"cluster-init": True})
    started(server1)
    server2 = lab.node("server2")
    server2.config(server=server1.url(), token=server1.token())
    started(server2)
    return {"server1": server1, "server2": server2}


# ----------------------------------------------------------------------------------------------------


def test_version_is_configurable(lab):
    node = lab.node("versioned")
    result = node.run("--version")
    assert result.returncode == 0 and result.stdout.startswith("k3s version v1.31.6+k3s1 ("), result.stdout
    with open(os.path.join(node.etc, "lab-version"), "w", encoding="utf-8") as handle:
        handle.write("v1.33.1+k3s1\n")
    assert node.run("--version").stdout.startswith("k3s version v1.33.1+k3s1 (")
    result = node.run("--version", env={"KUBEPKI_DOUBLE_VERSION": "v1.30.2+k3s2"})
    assert result.stdout.startswith("k3s version v1.30.2+k3s2 (")
    rke2 = Node(lab, "versioned-rke2", "127.0.0.1", program="rke2")
    assert rke2.run("--version").stdout.startswith("rke2 version v1.31.6+rke2r1 (")


def test_hash_ca_rules(lab):
    """The double's hashCA against digests computed here with openssl (§6.2), including the raw-bytes fallbacks."""
    work = tempfile.mkdtemp(dir=lab.base, prefix="hashca-")
    tool = Node(lab, "hashca", "127.0.0.1")

    def hash_of(path):
        result = tool.run("lab-hash-ca", path)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    old_root = make_ca(work, "old-root")
    assert hash_of(old_root[0]) == sha256_file(old_root[0])
    with open(old_root[0], "rb") as handle:
        crlf = os.path.join(work, "crlf.pem")
        with open(crlf, "wb") as out:
            out.write(handle.read().replace(b"\n", b"\r\n"))
    assert hash_of(crlf) == sha256_file(crlf) != sha256_file(old_root[0])
    # custom chain (generate-custom-ca-certs.sh shape): sha256 of the root's DER
    root = make_ca(work, "root", key_type="rsa")
    inter = make_ca(work, "intermediate", issuer=root, key_type="rsa")
    leaf_ca = make_ca(work, "server-ca", issuer=inter)
    bundle = concat(os.path.join(work, "custom.crt"), leaf_ca[0], inter[0], root[0])
    assert hash_of(bundle) == der_sha256(root[0])
    # cross-signed rotation bundle: the new self-signed root wins over the path through the old root
    new_root = make_ca(work, "new-root")
    xsigned = os.path.join(work, "new-root-xsigned.pem")
    csr = os.path.join(work, "x.csr")
    openssl("req", "-new", "-key", new_root[1], "-subj", subject_line(new_root[0]), "-config", os.path.join(work, "v3.cnf"), "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", old_root[0], "-CAkey", old_root[1], "-set_serial", "7", "-days", "3650", "-sha256",
            "-extfile", os.path.join(work, "v3.cnf"), "-extensions", "v3_ca", "-out", xsigned)
    new_ca = make_ca(work, "new-ca", issuer=new_root)
    cross = concat(os.path.join(work, "cross.crt"), new_ca[0], new_root[0], xsigned, old_root[0])
    assert hash_of(cross) == der_sha256(new_root[0])
    # fallbacks to the raw bytes: the first cert does not chain inside the bundle, or a CA carries EKU clientAuth only
    unrelated = concat(os.path.join(work, "unrelated.crt"), new_ca[0], old_root[0])
    assert hash_of(unrelated) == sha256_file(unrelated)
    client_only = make_ca(work, "client-only-inter", issuer=root, ext="v3_ca_client_only", key_type="rsa")
    eku_bundle = concat(os.path.join(work, "eku.crt"), make_ca(work, "under-eku", issuer=client_only)[0], client_only[0], root[0])
    assert hash_of(eku_bundle) == sha256_file(eku_bundle)


def subject_line(pem_path):
    return "/" + openssl("x509", "-in", pem_path, "-noout", "-subject", "-nameopt", "compat").split("=", 1)[1].strip().lstrip("/")


def test_custom_ca_first_start(lab):
    """CA files placed in server/tls before the first start (generate-custom-ca-certs.sh) are kept; token hash = root DER."""
    server = lab.node("custom1")
    server.config(**{"cluster-init": True, "lab-datastore": os.path.join(lab.base, "datastore-custom")})
    work = tempfile.mkdtemp(dir=lab.base, prefix="custom-")
    root = make_ca(work, "k3s-root-ca", key_type="rsa")
    inter = make_ca(work, "k3s-intermediate-ca", issuer=root, key_type="rsa")
    for ca_type in CA_TYPES:
        crt, key = make_ca(work, "k3s-%s-ca" % ca_type.replace("/", "-"), issuer=inter)
        concat(os.path.join(server.tls, ca_type + "-ca.crt"), crt, inter[0], root[0])
        concat(os.path.join(server.tls, ca_type + "-ca.key"), key)
    before = sha256_file(os.path.join(server.tls, "server-ca.crt"))
    started(server)
    assert sha256_file(os.path.join(server.tls, "server-ca.crt")) == before
    assert server.token().startswith("K10%s::server:" % der_sha256(root[0]))
    assert server.run("kubectl", "get", "--raw", "/readyz").stdout == "ok"
    server.service("stop")


def test_server_initialises_token_and_cacerts(cluster):
    server1 = cluster["server1"]
    ca = os.path.join(server1.tls, "server-ca.crt")
    token = server1.token()
    assert token == "K10%s::server:%s" % (sha256_file(ca), token.rsplit(":", 1)[1])
    assert len(token.rsplit(":", 1)[1]) == 32
    token_path = os.path.join(server1.data, "server", "token")
    assert os.stat(token_path).st_mode & 0o777 == 0o600
    assert os.readlink(os.path.join(server1.data, "server", "node-token")) == "token"
    assert subject_cn(ca).startswith("k3s-server-ca@")
    assert "Authority Key Identifier" not in openssl("x509", "-in", ca, "-noout", "-text")
    with open(os.path.join(server1.tls, "service.key"), encoding="utf-8") as handle:
        assert handle.read().startswith("-----BEGIN RSA PRIVATE KEY-----")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((server1.address, 6443), timeout=5) as raw:
        with ctx.wrap_socket(raw) as conn:
            conn.sendall(b"GET /cacerts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
    with open(ca, "rb") as handle:
        assert data.split(b"\r\n\r\n", 1)[1] == handle.read()
    # The joined server got the same CAs from the datastore and wrote the same token.
    assert cluster["server2"].token() == token
    # API paths need a client certificate under the client CA; kubectl uses the admin kubeconfig.
    result = server1.run("kubectl", "get", "--raw", "/readyz")
    assert result.returncode == 0 and result.stdout == "ok"
    for leaf, cn in (("client-admin", "system:admin"), ("serving-kube-apiserver", "kube-apiserver"), ("etcd/peer-server-client", "etcd-peer")):
        assert subject_cn(os.path.join(server1.tls, leaf + ".crt")) == cn


def test_etcd_members_talk_tls_with_lab_certs(cluster):
    server2 = cluster["server2"]
    result = etcdctl(server2, "endpoint", "health", "--cluster")
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("is healthy") == 2, result.stdout
    listing = etcdctl(server2, "member", "list")
    assert "server1" in listing.stdout and "server2" in listing.stdout and "https://" in listing.stdout
    refused = etcdctl(server2, "endpoint", "health", cert=False)
    assert refused.returncode != 0


def test_join_with_another_password_fails(lab, cluster):
    server1 = cluster["server1"]
    intruder = lab.node("server3")
    token = server1.token()
    intruder.config(server=server1.url(), token=token.split("::", 1)[0] + "::server:not-the-password")
    result = intruder.service("start")
    assert result.returncode != 0
    assert "bootstrap data already found and encrypted with different token" in intruder.read_log()


def test_agent_token_hash_gate(lab, cluster):
    server1 = cluster["server1"]
    agent = lab.node("agent1", role="agent")
    cluster["agent1"] = agent
    good = server1.token()
    wrong = "K10%s::%s" % ("0" * 64, good.split("::", 1)[1])
    agent.config(server=server1.url())
    env_dir = os.path.join(agent.root, "etc/systemd/system")
    os.makedirs(env_dir, exist_ok=True)
    env_file = os.path.join(env_dir, "k3s-agent.service.env")
    with open(env_file, "w", encoding="utf-8") as handle:
        handle.write("K3S_TOKEN=%s\n" % wrong)
    result = agent.service("start")
    assert result.returncode != 0
    expected = "token CA hash does not match the Cluster CA certificate hash: %s != %s" % ("0" * 64, good[3:67])
    assert expected in agent.read_log()
    assert not os.path.exists(os.path.join(agent.data, "agent", "client-kubelet.crt"))
    assert agent.service("status").returncode == 3
    with open(env_file, "w", encoding="utf-8") as handle:
        handle.write("K3S_TOKEN='%s'\n" % good)
    started(agent)
    assert agent.service("status").returncode == 0
    wait_ready(server1, "agent1")
    nodes = get_nodes(server1)
    assert nodes["agent1"] == nodes["server1"] == nodes["server2"] == "True"
    for fname in ("client-ca.crt", "server-ca.crt"):
        assert sha256_file(os.path.join(agent.data, "agent", fname)) == sha256_file(os.path.join(server1.tls, fname))
    assert issuer_cn(os.path.join(agent.data, "agent", "client-kubelet.crt")).startswith("k3s-client-ca@")


def test_agent_load_balancer_fails_over(cluster):
    """With its server down, an agent keeps heartbeating through, and restarts via, the other servers it learned."""
    server1, server2, agent = cluster["server1"], cluster["server2"], cluster["agent1"]
    lb_file = os.path.join(agent.data, "agent", "etc", "k3s-agent-load-balancer.json")
    with open(lb_file, encoding="utf-8") as handle:
        assert "%s:6443" % server2.address in json.load(handle)["ServerAddresses"]
    assert server1.service("stop").returncode == 0
    try:
        time.sleep(5)  # heartbeats every second in these tests: a fresh one now went through server2
        with open(os.path.join(lab_datastore(server2), "nodes", "agent1.json"), encoding="utf-8") as handle:
            assert time.time() - json.load(handle)["heartbeat"] < 3
        restarted(agent)
        assert "failed to get CA certs from %s" % server1.url() in agent.read_log()
    finally:
        started(server1)
    wait_ready(server1, "agent1")


def lab_datastore(node):
    return node.lab.datastore


def test_unit_execstart_token_beats_env_and_config(lab, cluster):
    """--token in the unit's ExecStart wins over K3S_TOKEN in the env file, which wins over config.yaml."""
    server1 = cluster["server1"]
    agent = lab.node("agent2", role="agent")
    good = server1.token()
    wrong = "K10%s::%s" % ("1" * 64, good.split("::", 1)[1])
    agent.config(server=server1.url(), token=wrong)
    unit_dir = os.path.join(agent.root, "etc/systemd/system")
    os.makedirs(unit_dir, exist_ok=True)
    with open(os.path.join(unit_dir, "k3s-agent.service.env"), "w", encoding="utf-8") as handle:
        handle.write("K3S_TOKEN=%s\n" % wrong)
    with open(os.path.join(unit_dir, "k3s-agent.service"), "w", encoding="utf-8") as handle:
        handle.write("[Service]\nType=notify\nExecStart=/usr/local/bin/k3s \\\n    agent \\\n    '--token' \\\n    '%s' \\\n\n" % good)
    started(agent)
    wait_ready(server1, "agent2")
    assert agent.service("stop").returncode == 0
    wait_ready(server1, "agent2", want="Unknown")
    # openrc-style env file in /etc/rancher/k3s (private per host): K3S_URL and K3S_TOKEN from there
    openrc = lab.node("agent3", role="agent")
    with open(os.path.join(openrc.etc, "config.yaml"), "w", encoding="utf-8") as handle:
        handle.write("node-name: agent3\nnode-ip: %s\n" % openrc.address)
    with open(os.path.join(openrc.etc, "k3s-agent.env"), "w", encoding="utf-8") as handle:
        handle.write("K3S_URL=%s\nK3S_TOKEN=\"%s\"\n" % (server1.url(), good))
    started(openrc)
    assert openrc.service("stop").returncode == 0


def rotate_ca(server, stage, force=False):
    args = ["certificate", "rotate-ca", "--path", stage, "--server", server.url()] + (["--force"] if force else [])
    return server.run(*args)


def test_rotate_ca_refusals(lab, cluster):
    server1 = cluster["server1"]
    datastore = os.path.join(lab.datastore, "bootstrap.json")
    before = sha256_file(datastore)
    # (d) a new CA that does not chain to the old root
    stage = tempfile.mkdtemp(dir=lab.base, prefix="stage-plain-")
    stage_rotation(server1, stage, cross_signed=False)
    result = rotate_ca(server1, stage)
    assert result.returncode != 0
    assert "see server log for details" in result.stderr and "certificate error ID" in result.stderr
    log = server1.read_log()
    assert "ServerCA: new CA cert cannot be verified using old CA chain: x509: certificate signed by unknown authority" in log
    # (d') a single-certificate bundle
    single = tempfile.mkdtemp(dir=lab.base, prefix="stage-single-")
    os.makedirs(os.path.join(single, "tls"))
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", os.path.join(single, "tls", "client-ca.key"))
    openssl("req", "-x509", "-new", "-key", os.path.join(single, "tls", "client-ca.key"), "-subj", "/CN=single", "-days", "30",
            "-out", os.path.join(single, "tls", "client-ca.crt"))
    assert rotate_ca(server1, single).returncode != 0
    assert "ClientCA: new CA bundle contains only a single certificate but should include root or intermediate CA certificates" in server1.read_log()
    # (e) cross-signed, but the old service key was not kept
    nokey = tempfile.mkdtemp(dir=lab.base, prefix="stage-nokey-")
    stage_rotation(server1, nokey, keep_service_key=False, types=("server",))
    assert rotate_ca(server1, nokey).returncode != 0
    assert "ServiceKey: old ServiceAccount signing key not in new ServiceAccount key list" in server1.read_log()
    # a cert staged with the wrong key: first cert must match the first key
    badkey = tempfile.mkdtemp(dir=lab.base, prefix="stage-badkey-")
    stage_rotation(server1, badkey, types=("request-header",))
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", os.path.join(badkey, "tls", "request-header-ca.key"))
    assert rotate_ca(server1, badkey).returncode != 0
    assert "RequestHeaderCAKey: new CA cert and key cannot be loaded as X590KeyPair: tls: private key does not match public key" in server1.read_log()
    assert sha256_file(datastore) == before


def test_rotate_ca_cross_signed_then_restart_reissues_leaves(lab, cluster):
    server1, server2, agent = cluster["server1"], cluster["server2"], cluster["agent1"]
    old_token = server1.token()
    old_admin_issuer = issuer_cn(os.path.join(server1.tls, "client-admin.crt"))
    stage = tempfile.mkdtemp(dir=lab.base, prefix="stage-xs-")
    work = stage_rotation(server1, stage)
    result = rotate_ca(server1, stage)
    assert result.returncode == 0, result.stderr + server1.read_log()[-2000:]
    assert "certificates saved to datastore" in result.stdout
    assert "Cluster Certificate Authority data has been updated, k3s must be restarted." in server1.read_log()
    # Nothing changes on disk until a restart; /cacerts is cached.
    assert server1.token() == old_token
    # Restart servers first (one at a time), then the agent.
    for server in (server1, server2):
        restarted(server)
        assert etcdctl(server, "endpoint", "health", "--cluster").returncode == 0
        admin = os.path.join(server.tls, "client-admin.crt")
        assert issuer_cn(admin) == "k3s-client-ca@" + subject_cn(os.path.join(work, "client-ca.pem")).split("@", 1)[1]
        assert issuer_cn(admin) != old_admin_issuer
        for leaf, ca_type in (("client-admin", "client"), ("serving-kube-apiserver", "server"), ("etcd/server-client", "etcd-server"),
                              ("etcd/peer-server-client", "etcd-peer"), ("client-auth-proxy", "request-header")):
            openssl("verify", "-partial_chain", "-CAfile", os.path.join(work, ca_type + "-ca.pem"), os.path.join(server.tls, leaf + ".crt"))
        # hashCA of the cross-signed bundle = sha256 of the DER of the new self-signed root
        new_hash = der_sha256(os.path.join(work, "server-root-ssigned.pem"))
        assert server.token() == "K10%s::%s" % (new_hash, old_token.split("::", 1)[1])
    result = etcdctl(server1, "endpoint", "health", "--cluster")
    assert result.returncode == 0 and result.stdout.count("is healthy") == 2, result.stdout
    # The agent still holds the old token: refused with upstream's message.
    assert agent.service("restart").returncode != 0
    assert "token CA hash does not match the Cluster CA certificate hash: %s != %s" % (old_token[3:67], new_hash) in agent.read_log()
    env_file = os.path.join(agent.root, "etc/systemd/system/k3s-agent.service.env")
    with open(env_file, "w", encoding="utf-8") as handle:
        handle.write("K3S_TOKEN=%s\n" % server1.token())
    started(agent)
    wait_ready(server1, "agent1")
    openssl("verify", "-partial_chain", "-CAfile", os.path.join(work, "client-ca.pem"), os.path.join(agent.data, "agent", "client-kubelet.crt"))


def test_mtime_rule(lab, cluster):
    server2 = cluster["server2"]
    assert server2.service("stop").returncode == 0
    path = os.path.join(server2.tls, "request-header-ca.crt")
    with open(path, "rb") as handle:
        original = handle.read()
    with open(path, "ab") as handle:
        handle.write(b"\n")
    future = time.time() + 60
    os.utime(path, (future, future))
    result = server2.service("start")
    assert result.returncode != 0
    assert ("%s newer than datastore and could cause a cluster outage. Remove the file(s) from disk and restart to be recreated from datastore." % path
            in server2.read_log())
    # An older differing copy is overwritten from the datastore.
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    started(server2)
    with open(path, "rb") as handle:
        assert handle.read() == original


def test_certificate_rotate_and_check(cluster):
    server2 = cluster["server2"]
    admin = os.path.join(server2.tls, "client-admin.crt")
    serial = openssl("x509", "-in", admin, "-noout", "-serial")
    assert server2.service("stop").returncode == 0
    result = server2.run("certificate", "rotate", "--service", "admin,etcd")
    assert result.returncode == 0, result.stderr
    backups = [d for d in os.listdir(os.path.join(server2.data, "server")) if d.startswith("tls-")]
    assert backups and os.path.exists(os.path.join(server2.data, "server", backups[0], "client-admin.crt"))
    assert not os.path.exists(admin) and not os.path.exists(os.path.join(server2.tls, "etcd", "peer-server-client.crt"))
    assert server2.run("certificate", "rotate", "--service", "nope").returncode != 0
    started(server2)
    assert openssl("x509", "-in", admin, "-noout", "-serial") != serial
    check = server2.run("certificate", "check", "-o", "json")
    rows = json.loads(check.stdout)
    assert {"filename", "subject", "usages", "expiryTime", "residualTime", "status"} <= set(rows[0])
    assert any(row["filename"] == "server/tls/client-admin.crt" and row["status"] == "OK" for row in rows)


def test_forced_rotation_of_unrelated_ca(lab, cluster):
    server1 = cluster["server1"]
    stage = tempfile.mkdtemp(dir=lab.base, prefix="stage-force-")
    work = stage_rotation(server1, stage, cross_signed=False, types=("client",))
    assert rotate_ca(server1, stage).returncode != 0
    result = rotate_ca(server1, stage, force=True)
    assert result.returncode == 0 and "certificates saved to datastore" in result.stdout
    assert "Save of CA certificates and keys forced, ignoring validation errors: ClientCA: new CA cert cannot be verified" in server1.read_log()
    # Nodes still on leaves of the old client CA turn NotReady once the datastore holds the unrelated CA.
    wait_ready(server1, "agent1", want="False")
    restarted(server1)
    openssl("verify", "-partial_chain", "-CAfile", os.path.join(work, "client-ca.pem"), os.path.join(server1.tls, "client-admin.crt"))
    wait_ready(server1, "server1")


def test_staged_files_with_old_mtimes_break_the_restart(lab):
    """A staging dir restored with old mtimes (cp -p): saved, but the restart refuses (pitfall 6)."""
    server = lab.node("mtime1")
    server.config(**{"cluster-init": True, "lab-datastore": os.path.join(lab.base, "datastore-mtime")})
    started(server)
    stage = tempfile.mkdtemp(dir=lab.base, prefix="stage-old-")
    stage_rotation(server, stage, types=("server",))
    old = time.time() - 7200
    for name in ("server-ca.crt", "server-ca.key", "service.key"):
        os.utime(os.path.join(stage, "tls", name), (old, old))
    assert rotate_ca(server, stage).returncode == 0
    result = server.service("restart")
    assert result.returncode != 0
    assert "newer than datastore and could cause a cluster outage" in server.read_log()
    server.service("stop")


def test_rke2_flavour(lab):
    server = lab.node("rke2s1", program="rke2")
    server.config(**{"lab-datastore": os.path.join(lab.base, "datastore-rke2")})
    started(server)
    assert os.path.exists(os.path.join(server.tls, "client-rke2-controller.crt"))
    assert subject_cn(os.path.join(server.tls, "server-ca.crt")).startswith("rke2-server-ca@")
    # kubectl is staged at start: <data-dir>/bin -> <data-dir>/data/<tag>-<12 hex>/bin (upstream releaseRefDigest)
    link = os.path.join(server.data, "bin")
    assert os.path.islink(link)
    assert re.fullmatch(re.escape(os.path.join(server.data, "data")) + r"/v1\.31\.6-rke2r1-[0-9a-f]{12}/bin", os.readlink(link)), os.readlink(link)
    assert os.access(os.path.join(os.readlink(link), "kubectl"), os.X_OK)
    result = subprocess.run([os.path.join(link, "kubectl"), "--kubeconfig", os.path.join(server.etc, "rke2.yaml"), "get", "--raw", "/readyz"],
                            check=False, capture_output=True, text=True, env=server.env(), timeout=60)
    assert (result.returncode, result.stdout) == (0, "ok"), result.stderr
    # rke2 itself has no kubectl command
    refused = server.run("kubectl", "get", "--raw", "/readyz")
    assert refused.returncode == 3 and refused.stderr == "No help topic for 'kubectl'\n", refused
    # the staged kubectl has no RKE2 default kubeconfig (like the real one: KUBECONFIG or ~/.kube/config)
    home = tempfile.mkdtemp(dir=lab.base, prefix="home-")
    bare = subprocess.run([os.path.join(link, "kubectl"), "get", "--raw", "/readyz"], check=False, capture_output=True, text=True,
                          env=server.env({"HOME": home}), timeout=60)
    assert bare.returncode != 0 and "localhost:8080 was refused" in bare.stderr, bare
    with_env = subprocess.run([os.path.join(link, "kubectl"), "get", "--raw", "/readyz"], check=False, capture_output=True, text=True,
                              env=server.env({"HOME": home, "KUBECONFIG": os.path.join(server.etc, "rke2.yaml")}), timeout=60)
    assert (with_env.returncode, with_env.stdout) == (0, "ok"), with_env.stderr
    stage = tempfile.mkdtemp(dir=lab.base, prefix="stage-rke2-")
    stage_rotation(server, stage, product="rke2", types=("client",))
    result = server.run("certificate", "rotate-ca", "--path", stage, "--server", server.url())
    assert result.returncode == 0 and "certificates saved to datastore" in result.stdout, result.stderr
    assert not os.path.exists(os.path.join(server.data, "force-restart"))
    # rke2-agent: token from /usr/local/lib/systemd/system/rke2-agent.env, supervisor URL on 9345 (restart picks up the new CA)
    restarted(server)
    agent = lab.node("rke2a1", program="rke2", role="agent")
    agent.config(server=server.url())
    env_dir = os.path.join(agent.root, "usr/local/lib/systemd/system")
    os.makedirs(env_dir)
    with open(os.path.join(env_dir, "rke2-agent.env"), "w", encoding="utf-8") as handle:
        handle.write("RKE2_TOKEN=%s\n" % server.token())
    started(agent)
    assert os.access(os.path.join(agent.data, "bin", "kubectl"), os.X_OK), "rke2 agent did not stage kubectl"
    wait_ready(server, "rke2a1")
    assert issuer_cn(os.path.join(agent.data, "agent", "client-rke2-controller.crt")).startswith("rke2-client-ca@")
    assert agent.service("stop").returncode == 0
    # never both units on one node (the units' ExecCondition)
    twin = Node(lab, "rke2s1", server.address, program="rke2", role="agent")
    refused = twin.service("start")
    assert refused.returncode != 0 and "refusing to start while rke2-server is active" in refused.stderr
    assert server.service("stop").returncode == 0
    assert server.run("certificate", "rotate", "--service", "rke2-controller").returncode == 0
    assert os.path.exists(os.path.join(server.data, "force-restart"))
    assert not os.path.exists(os.path.join(server.tls, "client-rke2-controller.crt"))
    started(server)
    assert os.path.exists(os.path.join(server.tls, "client-rke2-controller.crt"))
    server.service("stop")


def test_rke2_has_no_kubectl_command(lab):
    """Upstream rke2 (urfave/cli) answers an unknown command with its help command: `No help topic for 'kubectl'`, exit 3."""
    rke2 = Node(lab, "rke2-cli", "127.0.0.1", program="rke2")
    for args in (("kubectl", "get", "--raw", "/readyz"), ("kubectl",), ("help", "kubectl")):
        result = rke2.run(*args)
        assert (result.returncode, result.stdout, result.stderr) == (3, "", "No help topic for 'kubectl'\n"), (args, result)
    # k3s keeps its kubectl command (here without a kubeconfig: it fails loading it, not as an unknown command)
    k3s = Node(lab, "k3s-cli", "127.0.0.1", program="k3s")
    result = k3s.run("kubectl", "get", "--raw", "/readyz")
    assert result.returncode == 1 and "loading kubeconfig" in result.stderr and os.path.join(k3s.etc, "k3s.yaml") in result.stderr, result


def test_rke2_stages_kubectl_under_a_custom_data_dir(lab):
    """data-dir from config.yaml: kubectl staged under it; a new version stages a new directory and moves the link."""
    node = lab.node("rke2dd", program="rke2")
    data_dir = os.path.join(node.root, "srv", "rke2-data")
    node.config(**{"cluster-init": True, "disable-etcd": True, "data-dir": data_dir, "lab-datastore": os.path.join(lab.base, "datastore-rke2dd")})
    started(node)
    link = os.path.join(data_dir, "bin")
    first = os.readlink(link)
    assert re.fullmatch(re.escape(os.path.join(data_dir, "data")) + r"/v1\.31\.6-rke2r1-[0-9a-f]{12}/bin", first), first
    assert not os.path.lexists(os.path.join(node.data, "bin")) and not os.path.lexists(os.path.join(node.data, "data"))
    staged = subprocess.run([os.path.join(link, "kubectl"), "--kubeconfig", os.path.join(node.etc, "rke2.yaml"), "get", "--raw", "/readyz"],
                            check=False, capture_output=True, text=True, env=node.env(), timeout=60)
    assert (staged.returncode, staged.stdout) == (0, "ok"), staged.stderr
    assert node.service("stop").returncode == 0
    started(node, env={"KUBEPKI_DOUBLE_VERSION": "v1.32.5+rke2r1"})
    second = os.readlink(link)
    assert re.fullmatch(re.escape(os.path.join(data_dir, "data")) + r"/v1\.32\.5-rke2r1-[0-9a-f]{12}/bin", second), second
    assert os.access(os.path.join(first, "kubectl"), os.X_OK), "the previous release directory stays, as upstream"
    staged = subprocess.run([os.path.join(link, "kubectl"), "--kubeconfig", os.path.join(node.etc, "rke2.yaml"), "get", "nodes", "-o", "json"],
                            check=False, capture_output=True, text=True, env=node.env(), timeout=60)
    assert staged.returncode == 0 and "rke2dd" in [item["metadata"]["name"] for item in json.loads(staged.stdout)["items"]], staged.stderr
    assert node.service("stop").returncode == 0


def test_etcd_judges_a_peer_ca_without_cross_signature(lab):
    """Forced etcd peer CA rotation without a cross-signed bundle: the restarted member cannot talk to the old one."""
    store = os.path.join(lab.base, "datastore-etcd")
    first = lab.node("etcd1")
    first.config(**{"cluster-init": True, "lab-datastore": store})
    started(first)
    second = lab.node("etcd2")
    second.config(**{"server": first.url(), "token": first.token(), "lab-datastore": store})
    started(second)
    try:
        stage = tempfile.mkdtemp(dir=lab.base, prefix="stage-etcd-")
        stage_rotation(first, stage, cross_signed=False, types=("etcd/peer",))
        assert rotate_ca(first, stage).returncode != 0
        assert "ETCDPeerCA: new CA cert cannot be verified using old CA chain" in first.read_log()
        assert rotate_ca(first, stage, force=True).returncode == 0
        first.config(**{"cluster-init": True, "lab-datastore": store, "lab-etcd-timeout": 8})
        result = first.service("restart")
        assert result.returncode != 0
        assert "etcd did not become healthy" in first.read_log()
        with open(os.path.join(first.data, "lab", "etcd.log"), encoding="utf-8", errors="replace") as handle:
            etcd_log = handle.read()
        assert "certificate signed by unknown authority" in etcd_log or "bad certificate" in etcd_log, etcd_log[-3000:]
    finally:
        second.service("stop")
        first.service("stop")


def test_lab_fail_readyz_knob_and_kubectl_error_format(lab):
    """lab-fail-readyz: only /readyz fails (500 with a reason), the server runs; `kubectl get --raw` reports it as the real
    kubectl does (checked against kubectl v1.32): nothing on stdout, one stderr line with the body Go-quoted."""
    node = lab.node("failrdz")
    node.config(**{"cluster-init": True, "disable-etcd": True, "lab-fail-readyz": True,
                   "lab-datastore": os.path.join(lab.base, "datastore-failrdz")})
    started(node)
    try:
        result = node.run("kubectl", "get", "--raw", "/readyz")
        assert (result.returncode, result.stdout) == (1, ""), result
        assert result.stderr == ('Error from server (InternalError): an error on the server ("[-]lab-fail-readyz failed: reason: fault '
                                 'injected by the lab config (lab-fail-readyz: true)\\nreadyz check failed") has prevented the request '
                                 'from succeeding\n'), result.stderr
        livez = node.run("kubectl", "get", "--raw", "/livez")
        assert (livez.returncode, livez.stdout) == (0, "ok"), livez
        assert "failrdz" in get_nodes(node)
    finally:
        node.service("stop")
