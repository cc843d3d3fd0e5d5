# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""RKE1 clusters written by rke's own Go code (tests/rke1/gen, built by tests/rke1/build.sh): a cluster.yml, the
cluster.rkestate rke writes next to it, and each node's /etc/kubernetes/ssl under <cluster dir>/nodes/<address>.

Also the independent judges the tests use: openssl for verification, fingerprints and public keys, and plain JSON
for what the state file holds. Nothing here imports the collection's plugins.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# Three nodes: a control-plane + etcd + worker node, an etcd + worker node whose internal address differs from its
# address (rke names its etcd and kubelet certificates after the internal one), a worker.
CLUSTER_YML = """\
cluster_name: fixtures
nodes:
  - address: 10.0.0.1
    user: rke
    role: [controlplane, etcd, worker]
  - address: 203.0.113.2
    internal_address: 10.0.0.2
    user: rke
    role: [etcd, worker]
  - address: 10.0.0.3
    user: rke
    role: [worker]
services:
  kubelet:
    generate_serving_certificate: %s
"""
ADDRESSES = ("10.0.0.1", "203.0.113.2", "10.0.0.3")


class FixtureError(Exception):
    pass


def build_generator() -> str:
    result = subprocess.run(["bash", os.path.join(HERE, "build.sh")], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FixtureError("tests/rke1/build.sh failed:\n%s" % result.stderr[-3000:])
    return result.stdout.strip().splitlines()[-1]


def run_generator(generator: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([generator, *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise FixtureError("%s %s failed:\n%s" % (generator, " ".join(args), result.stderr[-3000:]))
    return result


class Cluster:
    """A cluster directory: cluster.yml, cluster.rkestate, nodes/<address>/etc/kubernetes/ssl."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.config = os.path.join(directory, "cluster.yml")
        self.state = os.path.join(directory, "cluster.rkestate")
        self.nodes = os.path.join(directory, "nodes")

    def ssl(self, address: str) -> str:
        return os.path.join(self.nodes, address, "etc", "kubernetes", "ssl")

    def data_dir(self, address: str) -> str:
        return os.path.join(self.nodes, address, "etc", "kubernetes")

    def document(self) -> dict:
        with open(self.state) as handle:
            return json.load(handle)

    def node_certificate_names(self, address: str) -> set:
        """<name> of every <name>.pem certificate file on the node (keys and kubeconfigs left out)."""
        return set(name[:-len(".pem")] for name in os.listdir(self.ssl(address))
                   if name.endswith(".pem") and not name.endswith("-key.pem"))


def new_cluster(generator: str, directory: str, *, kubelet_serving: bool = True) -> Cluster:
    os.makedirs(directory)
    cluster = Cluster(directory)
    with open(cluster.config, "w") as handle:
        handle.write(CLUSTER_YML % ("true" if kubelet_serving else "false"))
    run_generator(generator, "up", "-config", cluster.config, "-nodes", cluster.nodes)
    return cluster


def copy_cluster(cluster: Cluster, directory: str) -> Cluster:
    """cluster.yml and cluster.rkestate copied to ``directory`` (no node files)."""
    os.makedirs(directory)
    copy = Cluster(directory)
    shutil.copy2(cluster.config, copy.config)
    shutil.copy2(cluster.state, copy.state)
    return copy


def expired_ca(directory: str, common_name: str) -> tuple:
    """(certificate PEM, key PEM) of a CA valid from 2014 to 2024, made by ``openssl ca -selfsign``."""
    os.makedirs(os.path.join(directory, "newcerts"), exist_ok=True)
    open(os.path.join(directory, "index.txt"), "w").close()
    config = os.path.join(directory, "openssl.cnf")
    with open(config, "w") as handle:
        handle.write("[ca]\ndefault_ca = expired\n[expired]\ndir = %s\ndatabase = $dir/index.txt\n"
                     "new_certs_dir = $dir/newcerts\nserial = $dir/serial\ndefault_md = sha256\n"
                     "policy = anything\nunique_subject = no\n[anything]\ncommonName = supplied\n"
                     "[ca_ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign,"
                     "digitalSignature,keyEncipherment\nsubjectKeyIdentifier = hash\n" % directory)
    with open(os.path.join(directory, "serial"), "w") as handle:
        handle.write("01\n")
    key, csr, cert = (os.path.join(directory, name) for name in ("ca-key.pem", "ca.csr", "ca.pem"))
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + common_name)
    openssl("ca", "-batch", "-config", config, "-selfsign", "-keyfile", key, "-in", csr, "-out", cert, "-notext",
            "-startdate", "20140101000000Z", "-enddate", "20240101000000Z", "-extensions", "ca_ext")
    with open(cert) as cert_handle, open(key) as key_handle:
        return cert_handle.read(), key_handle.read()


def rotated_copy(generator: str, cluster: Cluster, directory: str, *args) -> Cluster:
    """`rke cert rotate <args>` on a copy of cluster.yml + cluster.rkestate; the nodes it deploys to are new
    directories, so ``cluster``'s node files stay as they were (the nodes before the rotation)."""
    copy = copy_cluster(cluster, directory)
    run_generator(generator, "rotate", "-config", copy.config, "-nodes", copy.nodes, *args)
    return copy


def openssl(*args, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False, input=stdin)
    if check and result.returncode != 0:
        raise FixtureError("openssl %s: %s" % (" ".join(args), result.stderr))
    return result


def openssl_verifies(cert_file: str, ca_file: str) -> bool:
    return openssl("verify", "-x509_strict", "-CAfile", ca_file, cert_file, check=False).returncode == 0


def openssl_fingerprint(cert_file: str) -> str:
    out = openssl("x509", "-in", cert_file, "-noout", "-fingerprint", "-sha256").stdout
    return out.strip().split("=", 1)[1]


def openssl_serial(cert_file: str) -> str:
    return openssl("x509", "-in", cert_file, "-noout", "-serial").stdout.strip().split("=", 1)[1]


def openssl_public_keys_equal(cert_file: str, key_file: str) -> bool:
    return (openssl("x509", "-in", cert_file, "-noout", "-pubkey").stdout
            == openssl("pkey", "-in", key_file, "-pubout").stdout)


def write_pem(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as handle:
        handle.write(text)
    return path


def run_module(work_dir: str, args: dict) -> tuple:
    """kubepki.certs.cert_check run by ansible (ad hoc, local connection): (rc, result)."""
    tree = tempfile.mkdtemp(dir=work_dir, prefix="tree-")
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="True", ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree",
               ANSIBLE_CALLBACK_TREE_DIR=tree, ANSIBLE_LOCAL_TEMP=os.path.join(work_dir, "ansible-tmp"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="False")
    ansible = shutil.which("ansible")
    if not ansible:
        raise FixtureError("ansible is not on PATH")
    argv = [ansible, "-i", "localhost,", "-c", "local", "localhost", "-m", "kubepki.certs.cert_check",
            "-a", json.dumps(args), "-e", "ansible_python_interpreter=%s" % sys.executable]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    path = os.path.join(tree, "localhost")
    if not os.path.exists(path):
        raise FixtureError("cert_check left no result: rc=%d\n%s\n%s" % (result.returncode, result.stdout[-3000:],
                                                                         result.stderr[-3000:]))
    with open(path, encoding="utf-8") as handle:
        return result.returncode, json.load(handle)
