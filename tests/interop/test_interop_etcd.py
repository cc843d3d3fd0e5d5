# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A live two-member etcd 3.4 cluster (Debian etcd-server) on 127.0.0.1 on certificates of the CA set.

Client TLS: server leaves under etcd/server-ca (etcd/ca for kubeadm), ``--trusted-ca-file`` = the CA's
``.crt`` bundle, ``--client-cert-auth``. Peer TLS: leaves under etcd/peer-ca, ``--peer-trusted-ca-file``
= its bundle, ``--peer-client-cert-auth``; the members must form a healthy cluster over it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal

import pytest

from interop_lib import find_tool, port_open, run, wait_until, write_text

CLUSTER_TIMEOUT = 45


def _chain(leaf, ca_pem):
    """leaf followed by its issuing CA, as k3s writes its etcd leaf files."""
    with open(leaf, encoding="ascii") as first, open(ca_pem, encoding="ascii") as second:
        return write_text(leaf[:-len(".crt")] + ".chain.crt", first.read() + second.read())


class EtcdCluster:
    def __init__(self, scenario, openssl, processes, free_port, work):
        self.scenario = scenario
        self.openssl = openssl
        self.processes = processes
        self.work = work
        self.etcd = find_tool("etcd")
        self.etcdctl = find_tool("etcdctl")
        server_ca, peer_ca = scenario.role("etcd-server"), scenario.role("etcd-peer")
        self.server_ca, self.peer_ca = server_ca, peer_ca
        self.members = []
        for index in (1, 2):
            name = "m%d" % index
            server = openssl.leaf(work, "%s-server" % name, issuer_cert=scenario.ca_alone(server_ca),
                                  issuer_key=scenario.ca_key(server_ca), cn="etcd-server", server=True, client=True,
                                  dns=("localhost",), ips=("127.0.0.1",))
            peer = openssl.leaf(work, "%s-peer" % name, issuer_cert=scenario.ca_alone(peer_ca),
                                issuer_key=scenario.ca_key(peer_ca), cn="etcd-peer", server=True, client=True,
                                dns=("localhost",), ips=("127.0.0.1",))
            self.members.append({"name": name, "client_port": free_port(), "peer_port": free_port(),
                                 "server": (_chain(server[0], scenario.ca_alone(server_ca)), server[1]),
                                 "peer": (_chain(peer[0], scenario.ca_alone(peer_ca)), peer[1])})
        client = openssl.leaf(work, "client", issuer_cert=scenario.ca_alone(server_ca),
                              issuer_key=scenario.ca_key(server_ca), cn="etcd-client")
        self.client = (_chain(client[0], scenario.ca_alone(server_ca)), client[1])

    def start(self):
        token = "interop-" + secrets.token_hex(4)
        initial = ",".join("%s=https://127.0.0.1:%d" % (m["name"], m["peer_port"]) for m in self.members)
        env = dict(os.environ, GOMAXPROCS="2")
        for member in self.members:
            data_dir = os.path.join(self.work, member["name"] + ".etcd")
            client_url = "https://127.0.0.1:%d" % member["client_port"]
            peer_url = "https://127.0.0.1:%d" % member["peer_port"]
            self.processes.start("etcd-" + member["name"], [
                self.etcd, "--name", member["name"], "--data-dir", data_dir, "--logger=zap", "--log-level=info",
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", token,
                "--cert-file", member["server"][0], "--key-file", member["server"][1],
                "--trusted-ca-file", self.scenario.ca_bundle(self.server_ca), "--client-cert-auth",
                "--peer-cert-file", member["peer"][0], "--peer-key-file", member["peer"][1],
                "--peer-trusted-ca-file", self.scenario.ca_bundle(self.peer_ca), "--peer-client-cert-auth",
                "--heartbeat-interval", "100", "--election-timeout", "1000",
            ], env=env, stop_signal=signal.SIGKILL)  # throw-away data dir: no graceful leader hand-off needed

    def endpoints(self):
        return ",".join("https://127.0.0.1:%d" % m["client_port"] for m in self.members)

    def etcdctl_run(self, *args, cert=None, key=None, cacert=None, timeout=15, command_timeout="5s"):
        cmd = [self.etcdctl, "--endpoints", self.endpoints(), "--cacert", cacert or self.scenario.ca_bundle(self.server_ca),
               "--cert", cert or self.client[0], "--key", key or self.client[1], "--dial-timeout", "2s",
               "--command-timeout", command_timeout] + list(args)
        return run(cmd, timeout=timeout, env=dict(os.environ, ETCDCTL_API="3"))


@pytest.fixture
def etcd_cluster(scenario, openssl, processes, free_port, tmp_path):
    cluster = EtcdCluster(scenario, openssl, processes, free_port, str(tmp_path))
    cluster.start()
    for member in cluster.members:
        wait_until(lambda m=member: port_open(m["client_port"]), timeout=15, what="etcd %s listening" % member["name"],
                   processes=processes)

    def healthy():
        result = cluster.etcdctl_run("endpoint", "health", "--cluster", "-w", "json", timeout=20)
        if result.returncode != 0:
            return None
        report = json.loads(result.stdout)
        return report if len(report) == 2 and all(entry.get("health") for entry in report) else None

    wait_until(healthy, timeout=CLUSTER_TIMEOUT, what="both etcd members healthy over peer TLS", processes=processes,
               interval=0.5)
    return cluster


@pytest.mark.scenarios("k3s-ec", "rke2-rsa-pkcs8-constrained", "kubeadm-ec-pkcs8-constrained")
def test_etcd_two_member_cluster_mtls(etcd_cluster, processes, openssl, tmp_path):
    """Both members healthy over peer TLS; put/get over client mTLS; strangers refused on both ports."""
    cluster = etcd_cluster
    members = cluster.etcdctl_run("member", "list", "-w", "json")
    assert members.returncode == 0, members.stderr
    listed = json.loads(members.stdout)["members"]
    assert sorted(m.get("name") for m in listed) == ["m1", "m2"], listed
    for member in listed:
        assert all(url.startswith("https://") for url in member["peerURLs"] + member["clientURLs"]), member

    key = "/interop/" + secrets.token_hex(4)
    put = cluster.etcdctl_run("put", key, "written-over-mtls")
    assert put.returncode == 0 and "OK" in put.stdout, put.stderr
    # Read back through the OTHER member only: the write travelled over peer TLS.
    second = "https://127.0.0.1:%d" % cluster.members[1]["client_port"]
    get = run([cluster.etcdctl, "--endpoints", second, "--cacert", cluster.scenario.ca_bundle(cluster.server_ca),
               "--cert", cluster.client[0], "--key", cluster.client[1], "--command-timeout", "5s",
               "get", key, "--print-value-only"], timeout=15, env=dict(os.environ, ETCDCTL_API="3"))
    assert get.returncode == 0 and get.stdout.strip() == "written-over-mtls", get.stdout + get.stderr

    # A client cert of an unrelated CA is refused; a client trusting another CA refuses the server.
    work = str(tmp_path)
    foreign_cert, foreign_key = openssl.self_signed_ca(work, "foreign-ca", cn="etcd-foreign-ca")
    stranger = openssl.leaf(work, "stranger", issuer_cert=foreign_cert, issuer_key=foreign_key, cn="etcd-client",
                            server=True, client=True)
    refused = cluster.etcdctl_run("get", key, cert=stranger[0], key=stranger[1], timeout=20, command_timeout="2s")
    assert refused.returncode != 0, "etcd accepted a client cert of a foreign CA:\n%s" % refused.stdout
    assert "failed to verify client certificate" in processes.logs(tail=200000), "etcd logged no client-cert rejection"
    distrust = cluster.etcdctl_run("get", key, cacert=foreign_cert, timeout=20, command_timeout="2s")
    assert distrust.returncode != 0, "etcdctl trusted the etcd server with a foreign --cacert"

    # The peer listener serves /members to a peer-CA client and rejects the stranger.
    curl = find_tool("curl")
    url = "https://127.0.0.1:%d/members" % cluster.members[0]["peer_port"]
    peer_bundle = cluster.scenario.ca_bundle(cluster.peer_ca)
    good = run([curl, "-sS", "--http1.1", "--max-time", "10", "--cacert", peer_bundle,
                "--cert", cluster.members[1]["peer"][0], "--key", cluster.members[1]["peer"][1], url], timeout=20)
    assert good.returncode == 0, good.stderr
    assert sorted(m["name"] for m in json.loads(good.stdout)) == ["m1", "m2"], good.stdout
    bad = run([curl, "-sS", "--http1.1", "--max-time", "10", "--cacert", peer_bundle, "--cert", stranger[0],
               "--key", stranger[1], url], timeout=20)
    assert bad.returncode != 0, "the etcd peer port accepted a foreign client cert:\n%s" % bad.stdout

    # Still healthy after the refusals.
    assert cluster.etcdctl_run("endpoint", "health", "--cluster").returncode == 0
    processes.assert_alive()
