# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The k3s double on the multi-node lab: real SSH hosts in network namespaces, driven by Ansible.

Needs root, openssh-server, etcd and the harness tests/lab/kubepki_lab.py (conftest.py's shared fixtures: a
missing one fails the test). The double is installed into /usr/local/bin + /etc/init.d on the (shared) root
filesystem (idempotent; left in place because other labs on this machine use the same installed double). ``ansible.builtin.service`` starts,
restarts and fails the services through the init scripts.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

ANSIBLE = shutil.which("ansible") or os.path.join(os.path.dirname(sys.executable), "ansible")


def ansible(state, pattern, module, args, forks=5):
    """Ad-hoc run; returns (CompletedProcess, {host: status}) parsed from the minimal callback ("host | CHANGED => ...")."""
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1")
    cmd = [ANSIBLE, "-i", state["inventory"], pattern, "-f", str(forks), "-m", module, "-a", args]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=240)
    hosts = dict(re.findall(r"^(\S+) \| ([A-Z]+)", result.stdout, re.MULTILINE))
    return result, hosts


def host_file(state, host, path):
    root = next(h["root"] for h in state["hosts"] if h["name"] == host)
    with open(os.path.join(root, "root") + path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def write_config(state, host, text):
    root = next(h["root"] for h in state["hosts"] if h["name"] == host)
    path = os.path.join(root, "root", "etc", "rancher", "k3s", "config.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return root


@pytest.fixture(scope="module")
def lab_state(lab_harness, lab_prerequisites, installed_double):
    del lab_prerequisites, installed_double
    base = tempfile.mkdtemp(prefix="kdl-", dir="/tmp")
    try:
        state = lab_harness.up(base, 2, 1, name="kdbl", subnet="10.126.0.0/24", log=lambda msg: None)
    except lab_harness.LabBusy as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail("another lab holds kdbl/10.126.0.0/24: %s" % exc)
    try:
        state["datastore"] = os.path.join(base, "datastore")
        yield state
    finally:
        lab_harness.down(base, log=lambda msg: None)
        shutil.rmtree(base, ignore_errors=True)


def test_service_module_drives_the_double_over_ssh(lab_state):
    state = lab_state
    server1 = next(h for h in state["hosts"] if h["name"] == "server1")
    store = state["datastore"]
    root1 = write_config(state, "server1", "cluster-init: true\ntoken: lab-secret\nlab-datastore: %s\n" % store)
    write_config(state, "server2", "server: https://%s:6443\ntoken: lab-secret\nlab-datastore: %s\n" % (server1["address"], store))
    result, hosts = ansible(state, "servers", "ansible.builtin.service", "name=k3s state=started", forks=1)
    assert result.returncode == 0, result.stdout + result.stderr
    assert hosts == {"server1": "CHANGED", "server2": "CHANGED"}
    with open(os.path.join(root1, "root", "var", "lib", "rancher", "k3s", "server", "token"), encoding="utf-8") as handle:
        token = handle.read().strip()
    # An agent whose token carries a wrong CA hash: the service fails to start (bounded retry), with upstream's message.
    wrong = "K10%s::%s" % ("f" * 64, token.split("::", 1)[1])
    agent_root = write_config(state, "agent1", "server: https://%s:6443\ntoken: %s\nlab-agent-timeout: 6\n" % (server1["address"], wrong))
    result, hosts = ansible(state, "agents", "ansible.builtin.service", "name=k3s-agent state=started")
    assert result.returncode != 0
    with open(os.path.join(agent_root, "root", "var", "lib", "rancher", "k3s", "lab", "k3s-agent.log"), encoding="utf-8") as handle:
        assert "token CA hash does not match the Cluster CA certificate hash: %s != %s" % ("f" * 64, token[3:67]) in handle.read()
    write_config(state, "agent1", "server: https://%s:6443\ntoken: %s\n" % (server1["address"], token))
    result, hosts = ansible(state, "agents", "ansible.builtin.service", "name=k3s-agent state=started")
    assert result.returncode == 0, result.stdout
    result, hosts = ansible(state, "server1", "ansible.builtin.service", "name=k3s state=restarted")
    assert result.returncode == 0 and hosts == {"server1": "CHANGED"}, result.stdout
    out = "/var/lib/rancher/k3s/lab/test-output"
    result, hosts = ansible(state, "server2", "ansible.builtin.shell", "k3s kubectl get nodes -o json > %s" % out)
    assert result.returncode == 0, result.stdout
    nodes = json.loads(host_file(state, "server2", out))["items"]
    assert {n["metadata"]["name"]: n["status"]["conditions"][0]["status"] for n in nodes} == {"server1": "True", "server2": "True", "agent1": "True"}
    health = ("ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert={d}/server-ca.crt --cert={d}/client.crt --key={d}/client.key "
              "endpoint health --cluster > {o} 2>&1".format(d="/var/lib/rancher/k3s/server/tls/etcd", o=out))
    result, hosts = ansible(state, "server1", "ansible.builtin.shell", health)
    report = host_file(state, "server1", out)
    assert result.returncode == 0 and report.count("is healthy") == 2, result.stdout + report
    assert "https://%s:2379 is healthy" % server1["address"] in report
    result, hosts = ansible(state, "k3s_cluster", "ansible.builtin.service", "name=k3s state=stopped")
    assert result.returncode == 0
