# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rke double (tests/rke1/rke_double.py) against three SSH hosts of the network-namespace lab.

One story, in order (each test builds on the previous one): ``rke up``, ``rke cert rotate`` (all services), ``rke cert
rotate --service kube-apiserver``, the two refusals (no state file; an expired kube-ca without --rotate-ca), then
``rke cert rotate --rotate-ca``. Verdicts: openssl on the files the hosts hold (``verify -x509_strict`` against the
kube-ca of cluster.rkestate, SHA-256 fingerprints), the bytes of the state file and the node files, and the restart
logs the double appends on each host. Needs root, sshd, ssh/scp, openssl and the generator (tests/rke1/build.sh);
a missing one fails the test.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from rke1_fixtures import build_generator, expired_ca, openssl_fingerprint, openssl_verifies

HERE = os.path.dirname(os.path.abspath(__file__))
DOUBLE = os.path.join(HERE, "rke_double.py")
HARNESS = os.path.join(HERE, "..", "lab", "kubepki_lab.py")
LAB_NAME, LAB_SUBNET = "krke", "10.127.0.0/24"
RESTART_LOG = "/var/log/kubepki-lab/rke-restarts.log"
# Lab host -> rke roles: three etcd members, two control-plane nodes, two workers.
ROLES = {"server1": ["controlplane", "etcd"], "server2": ["controlplane", "etcd", "worker"], "server3": ["etcd", "worker"]}
PLANES = ("etcd", "controlplane", "worker")
STALE_TOKEN_KEY = "kube-service-account-token"  # rke keeps this key pair across --rotate-ca (signed by the old CA)


def load_harness():
    spec = importlib.util.spec_from_file_location("kubepki_lab", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def rke1_lab(prefix, name, subnet):
    """Three lab hosts with sshd (the ROLES' names) and a cluster.yml naming them on a workstation directory; torn down
    after. Yields the lab's state, hosts, paths and the generator the double runs."""
    assert os.geteuid() == 0, "the lab needs root (network and mount namespaces)"
    for tool in ("ssh", "scp", "openssl", "/usr/sbin/sshd"):
        assert shutil.which(tool) or os.access(tool, os.X_OK), "needs %s (scripts/bootstrap.sh installs openssh and openssl)" % tool
    generator = build_generator()
    harness = load_harness()
    base = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        state = harness.up(base, len(ROLES), 0, name=name, subnet=subnet, owner_pid=os.getpid(), log=lambda msg: None)
    except harness.LabBusy as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail("another lab holds %s/%s: %s" % (name, subnet, exc))
    try:
        workstation = os.path.join(base, "workstation")
        os.makedirs(workstation)
        hosts = {host["name"]: host for host in state["hosts"]}
        lines = ["cluster_name: lab", "ssh_key_path: %s" % state["key_file"], "nodes:"]
        for host, roles in ROLES.items():
            lines += ["  - address: %s" % hosts[host]["address"], "    hostname_override: %s" % host, "    user: root",
                      "    port: 22", "    role: [%s]" % ", ".join(roles)]
        config = os.path.join(workstation, "cluster.yml")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        yield {"state": state, "hosts": hosts, "config": config, "workstation": workstation, "generator": generator,
               "rkestate": os.path.join(workstation, "cluster.rkestate"), "base": base}
    finally:
        harness.down(base, log=lambda msg: None)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def lab():
    with rke1_lab("krke-", LAB_NAME, LAB_SUBNET) as made:
        yield dict(made, snapshots={})


def rke(lab, *args):
    env = dict(os.environ, KUBEPKI_RKE1_GENERATOR=lab["generator"])
    return subprocess.run([sys.executable, DOUBLE, *args], capture_output=True, text=True, check=False, env=env,
                          cwd=lab["workstation"], timeout=600)


def on_host(lab, name, path):
    """A path on a lab host, read through the host's root directory (the lab bind-mounts it over the real path)."""
    return os.path.join(lab["hosts"][name]["root"], "root") + path


def ssl_dir(lab, name):
    return on_host(lab, name, "/etc/kubernetes/ssl")


def node_certificates(lab, name):
    directory = ssl_dir(lab, name)
    return sorted(entry[:-4] for entry in os.listdir(directory) if entry.endswith(".pem") and not entry.endswith("-key.pem"))


def fingerprints(lab):
    return {name: {cert: openssl_fingerprint(os.path.join(ssl_dir(lab, name), cert + ".pem")) for cert in node_certificates(lab, name)}
            for name in ROLES}


def kubeconfig(lab):
    """kube_config_cluster.yml as YAML, its server URL checked and left out: without a state file rke takes the cluster
    for a legacy one and rewrites the kubeconfig pointing at each control-plane node in turn (cluster.go
    rebuildLocalAdminConfig), keeping the last one when no API server answers, as in the lab."""
    with open(os.path.join(lab["workstation"], "kube_config_cluster.yml"), encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    control_planes = ["https://%s:6443" % lab["hosts"][name]["address"] for name, roles in ROLES.items() if "controlplane" in roles]
    assert document["clusters"][0]["cluster"].pop("server") in control_planes
    return document


def digest_tree(lab):
    """SHA-256 of every node file, the restart logs and the workstation's files: what a refused command must not change
    (kube_config_cluster.yml compared as YAML without its server URL, see kubeconfig())."""
    digests = {}
    for name in ROLES:
        for path in [os.path.join(ssl_dir(lab, name), entry) for entry in sorted(os.listdir(ssl_dir(lab, name)))] + [on_host(lab, name, RESTART_LOG)]:
            with open(path, "rb") as handle:
                digests[path] = hashlib.sha256(handle.read()).hexdigest()
    for entry in sorted(os.listdir(lab["workstation"])):
        if entry == "kube_config_cluster.yml":
            digests[entry] = kubeconfig(lab)
            continue
        with open(os.path.join(lab["workstation"], entry), "rb") as handle:
            digests[entry] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def state_ca(lab, tmp_path, name="kube-ca"):
    """A CA certificate of cluster.rkestate's currentState (what rke deployed), written for openssl."""
    with open(lab["rkestate"], encoding="utf-8") as handle:
        document = json.load(handle)
    path = str(tmp_path / ("%s-from-state.pem" % name))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(document["currentState"]["certificatesBundle"][name]["certificatePEM"])
    return path


def assert_chain_to_state_ca(lab, tmp_path, skip=()):
    """Every certificate file on every node chains to its CA in cluster.rkestate: the aggregation layer's proxy client
    to the request-header CA, everything else to kube-ca (the CAs themselves verify against themselves)."""
    ca = state_ca(lab, tmp_path)
    requestheader_ca = state_ca(lab, tmp_path, "kube-apiserver-requestheader-ca")
    checked = 0
    for name in ROLES:
        for cert in node_certificates(lab, name):
            if cert in skip:
                continue
            signer = requestheader_ca if cert.startswith("kube-apiserver-requestheader-ca") or cert == "kube-apiserver-proxy-client" else ca
            assert openssl_verifies(os.path.join(ssl_dir(lab, name), cert + ".pem"), signer), "%s: %s does not chain to %s" % (name, cert, signer)
            checked += 1
    assert checked >= 9 * len(ROLES)  # kube-ca, three etcd members, kube-node, kube-proxy, ... on every node
    return ca


def restart_log(lab):
    """{sequence: (host, plane, action, container)} of all hosts' logs."""
    entries = {}
    for name in ROLES:
        path = on_host(lab, name, RESTART_LOG)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as handle:
            for line in handle.read().splitlines():
                sequence, plane, action, container = line.split()
                entries.setdefault(name, []).append((int(sequence), plane, action, container))
    return entries


def new_entries(before, after):
    """The lines one run appended, merged across hosts and sorted by the double's sequence number."""
    merged = []
    for name, lines in after.items():
        merged += [(seq, name, plane, action, container) for seq, plane, action, container in lines[len(before.get(name, [])):]]
    return sorted(merged)


def expected_steps(with_etcd):
    """rke's order (cmd/cert.go): etcd plane, control plane, worker plane on every host (nginx-proxy off control planes)."""
    steps = []
    if with_etcd:
        steps += [(name, "etcd", "etcd") for name, roles in ROLES.items() if "etcd" in roles]
    steps += [(name, "controlplane", container) for name, roles in ROLES.items() if "controlplane" in roles
              for container in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")]
    steps += [(name, "worker", container) for name, roles in ROLES.items()
              for container in ("kubelet", "kube-proxy") + (() if "controlplane" in roles else ("nginx-proxy",))]
    return steps


def assert_plane_order(entries, action, with_etcd):
    """``entries``: (sequence, host, plane, action, container) of one run, sorted by sequence."""
    assert [entry[0] for entry in entries] == list(range(1, len(entries) + 1))
    planes = [PLANES.index(entry[2]) for entry in entries]
    assert planes == sorted(planes), "planes out of rke's order: %s" % entries
    assert all(entry[3] == action for entry in entries)
    assert sorted((entry[1], entry[2], entry[4]) for entry in entries) == sorted(expected_steps(with_etcd))


def test_01_version(lab):
    result = rke(lab, "--version")
    assert result.returncode == 0 and result.stdout == "rke version v1.8.0\n"


def test_02_up_deploys_certificates_over_ssh(lab, tmp_path):
    before = restart_log(lab)
    result = rke(lab, "up", "--config", "cluster.yml")
    assert result.returncode == 0, result.stderr
    ca = assert_chain_to_state_ca(lab, tmp_path)
    for name, roles in ROLES.items():
        certs = node_certificates(lab, name)
        assert ("kube-apiserver" in certs) == ("controlplane" in roles)
        assert os.path.exists(os.path.join(ssl_dir(lab, name), "kubecfg-kube-node.yaml"))
        assert os.path.exists(os.path.join(ssl_dir(lab, name), "kube-ca-key.pem")) == ("controlplane" in roles)
        etcd = [cert for cert in certs if cert.startswith("kube-etcd-")]
        assert len(etcd) == 3  # every node holds every etcd member's certificate
    # kube_config_cluster.yml: the admin's certificate chains to the state's kube-ca too (checked by openssl).
    kubeconfig = os.path.join(lab["workstation"], "kube_config_cluster.yml")
    assert os.stat(kubeconfig).st_mode & 0o777 == 0o600
    admin = str(tmp_path / "admin.pem")
    with open(kubeconfig, encoding="utf-8") as handle:
        data = [line.split(":", 1)[1].strip().strip('"') for line in handle if line.strip().startswith("client-certificate-data:")]
    with open(admin, "wb") as handle:
        handle.write(base64.b64decode(data[0]))
    assert openssl_verifies(admin, ca)
    assert_plane_order(new_entries(before, restart_log(lab)), "start", with_etcd=True)
    lab["snapshots"]["up"] = fingerprints(lab)


def test_03_rotate_all_services(lab, tmp_path):
    before_log, before = restart_log(lab), lab["snapshots"]["up"]
    result = rke(lab, "cert", "rotate", "--config", "cluster.yml")
    assert result.returncode == 0, result.stderr
    assert_chain_to_state_ca(lab, tmp_path)
    after = fingerprints(lab)
    for name in ROLES:
        assert after[name]["kube-ca"] == before[name]["kube-ca"]
        for cert in ("kube-node", "kube-proxy") + (("kube-apiserver",) if "controlplane" in ROLES[name] else ()):
            assert after[name][cert] != before[name][cert], "%s: %s not rotated" % (name, cert)
    assert_plane_order(new_entries(before_log, restart_log(lab)), "restart", with_etcd=True)
    lab["snapshots"]["all"] = after


def test_04_rotate_one_service(lab, tmp_path):
    before_log, before = restart_log(lab), lab["snapshots"]["all"]
    result = rke(lab, "cert", "rotate", "--service", "kube-apiserver", "--config", "cluster.yml")
    assert result.returncode == 0, result.stderr
    assert_chain_to_state_ca(lab, tmp_path)
    after = fingerprints(lab)
    for name, roles in ROLES.items():
        changed = sorted(cert for cert in after[name] if after[name][cert] != before[name].get(cert))
        assert changed == (["kube-apiserver"] if "controlplane" in roles else []), "%s: %s" % (name, changed)
    # No etcd plane restart for a service other than etcd (rke restarts the control and worker planes only).
    assert_plane_order(new_entries(before_log, restart_log(lab)), "restart", with_etcd=False)
    lab["snapshots"]["one"] = after


def test_05_rotate_without_a_state_file_fails_like_rke_and_changes_nothing(lab):
    moved = lab["rkestate"] + ".away"
    os.rename(lab["rkestate"], moved)
    try:
        before = digest_tree(lab)
        result = rke(lab, "cert", "rotate", "--config", "cluster.yml")
        assert result.returncode == 1
        assert 'level=fatal msg="Failed to rotate certificates: can\'t find old certificates"' in result.stderr
        assert not os.path.exists(lab["rkestate"])
        assert digest_tree(lab) == before
    finally:
        os.rename(moved, lab["rkestate"])


def test_06_expired_ca_without_rotate_ca_fails_like_rke_and_changes_nothing(lab, tmp_path):
    ca_pem, key_pem = expired_ca(str(tmp_path / "expired"), "kube-ca")
    with open(lab["rkestate"], encoding="utf-8") as handle:
        document = json.load(handle)
    for section in ("currentState", "desiredState"):
        document[section]["certificatesBundle"]["kube-ca"].update(certificatePEM=ca_pem, keyPEM=key_pem)
    with open(lab["rkestate"], "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    before = digest_tree(lab)
    result = rke(lab, "cert", "rotate", "--config", "cluster.yml")
    assert result.returncode == 1
    assert "level=fatal" in result.stderr and "CA certificate is invalid, please use the --rotate-ca flag" in result.stderr
    assert digest_tree(lab) == before


def test_07_rotate_ca_replaces_the_expired_ca_everywhere(lab, tmp_path):
    before_log, before = restart_log(lab), lab["snapshots"]["one"]
    result = rke(lab, "cert", "rotate", "--rotate-ca", "--config", "cluster.yml")
    assert result.returncode == 0, result.stderr
    ca = assert_chain_to_state_ca(lab, tmp_path, skip=(STALE_TOKEN_KEY,))
    assert openssl_verifies(ca, ca)  # the new kube-ca is valid (the expired one is not)
    after = fingerprints(lab)
    for name in ROLES:
        assert after[name]["kube-ca"] != before[name]["kube-ca"]
        assert openssl_fingerprint(ca) == after[name]["kube-ca"]
    assert_plane_order(new_entries(before_log, restart_log(lab)), "restart", with_etcd=True)
