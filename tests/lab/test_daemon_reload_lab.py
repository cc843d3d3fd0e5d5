# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A join token in a systemd unit's ExecStart: rotate-ca.yml reloads systemd before restarting that node, only there.

k3s 1 server + 2 agents on the lab (tests/lab/kubepki_lab.py) with the k3s double. agent1 keeps its token in
``/etc/systemd/system/k3s-agent.service`` (ExecStart ... '--token' 'K10...', as k3s's install.sh writes it; the double
reads that ExecStart at every start, and /etc/systemd/system is private per lab host). After ``rotate-ca.yml``:

- the systemctl recorder (tests/lab/double/systemctl_double.py, installed as /usr/local/bin/systemctl) shows
  ``daemon-reload`` then ``restart k3s-agent`` on agent1, and a restart without any daemon-reload on server1 and agent2;
- the unit file carries K10<hashCA of the new server CA bundle> (the double's own ``lab-hash-ca``) with the same
  user and password, and passes ``systemd-analyze verify`` (systemd's parser; Debian package systemd) before and after;
- every node is Ready (the double's kubectl) and the recorder saw every restart succeed.

Needs root, openssh-server, etcd-server, util-linux (nsenter) and systemd (systemd-analyze); a missing one fails the
test naming the Debian package. Nothing under plugins/ is imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DOUBLE = os.path.join(HERE, "double", "k3s_double.py")
BOOTSTRAP = os.path.join(HERE, "playbooks", "bootstrap_cluster.yml")
LAB_NAME, LAB_SUBNET = "kpdr", "10.123.124.0/24"
UNIT = "/etc/systemd/system/k3s-agent.service"
RECORD = "/var/log/kubepki-lab/systemctl.jsonl"
TOOLS = {"systemd-analyze": "systemd", "nsenter": "util-linux", "etcd": "etcd-server", "ssh": "openssh-client",
         "/usr/sbin/sshd": "openssh-server"}
# k3s's install.sh writes the agent unit like this (ExecStart arguments quoted, one per line).
UNIT_TEXT = """[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=/bin/sh -xc '! /usr/bin/systemctl is-enabled --quiet nm-cloud-setup.service 2>/dev/null'
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s \\
    agent \\
\t'--server' \\
\t'{server}' \\
\t'--token' \\
\t'{token}' \\

"""


def _load_lab():
    spec = importlib.util.spec_from_file_location("kubepki_lab", os.path.join(HERE, "kubepki_lab.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lab_harness = _load_lab()


def tool(name):
    path = name if os.path.isabs(name) else shutil.which(name)
    assert path and os.access(path, os.X_OK), "needs %s (Debian package %s)" % (name, TOOLS[name])
    return path


def run(cmd, timeout=60, check=True, **kwargs):
    try:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        pytest.fail("timed out after %ss: %s" % (timeout, " ".join(cmd)), pytrace=False)
    if check:
        detail = (result.stdout[-3000:], result.stderr[-3000:])
        assert result.returncode == 0, "%s -> rc %d\n%s\n%s" % ((" ".join(cmd), result.returncode) + detail)
    return result


class Lab:
    def __init__(self, state, collections, log_dir):
        self.state, self.collections, self.log_dir = state, collections, log_dir
        self.hosts = {h["name"]: h for h in state["hosts"]}

    def path(self, host, path):
        return os.path.join(self.hosts[host]["root"], "root") + path

    def exec(self, host, argv, **kwargs):
        return run([tool("nsenter"), "-t", str(self.hosts[host]["pid"]), "-m", "-u", "-n", "--"] + list(argv), **kwargs)

    def playbook(self, playbook, *args):
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=self.collections, ANSIBLE_HOST_KEY_CHECKING="False",
                   ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="False", ANSIBLE_STDOUT_CALLBACK="default")
        env.pop("ANSIBLE_CONFIG", None)  # the repository's ansible.cfg (cwd) applies
        playbook_bin = shutil.which("ansible-playbook") or os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
        result = run([playbook_bin, "-i", self.state["inventory"], playbook] + list(args), timeout=600, check=False,
                     cwd=REPO, env=env)
        output = result.stdout + result.stderr
        with open(os.path.join(self.log_dir, os.path.basename(playbook) + ".log"), "w", encoding="utf-8") as handle:
            handle.write(output)
        return result.returncode, output

    def systemctl_calls(self, host):
        path = self.path(host, RECORD)
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    assert os.geteuid() == 0, "the lab needs root (network and mount namespaces)"
    for name in TOOLS:
        tool(name)
    work = str(tmp_path_factory.mktemp("daemon-reload-lab"))
    run(["/usr/bin/python3", DOUBLE, "install", "--root", "/"])
    base = tempfile.mkdtemp(prefix="kpr-dr-", dir="/tmp")
    try:
        state = lab_harness.up(base, 1, 2, name=LAB_NAME, subnet=LAB_SUBNET, owner_pid=os.getpid(), log=lambda msg: None)
    except lab_harness.LabError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail("lab %s/%s cannot come up: %s" % (LAB_NAME, LAB_SUBNET, exc), pytrace=False)
    try:
        yield Lab(state, lab_harness.collections_path(work), work)
    finally:
        try:
            lab_harness.down(base, log=lambda msg: None)
        finally:
            shutil.rmtree(base, ignore_errors=True)


def analyze_verify(path):
    """systemd-analyze verify of a unit file; (rc, what it printed)."""
    result = run([tool("systemd-analyze"), "verify", path], check=False)
    return result.returncode, (result.stdout + result.stderr).strip()


def test_unit_file_token_gets_a_daemon_reload_before_the_restart(lab):
    rc, out = lab.playbook(BOOTSTRAP, "-e", "lab_dir=%s" % lab.state["base"])
    assert rc == 0, "bootstrap failed:\n" + out[-4000:]
    config = yaml.safe_load(open(lab.path("agent1", "/etc/rancher/k3s/config.yaml"), encoding="utf-8"))
    old_token = str(config["token"])
    assert old_token.startswith("K10"), old_token[:3]
    unit_path = lab.path("agent1", UNIT)
    os.makedirs(os.path.dirname(unit_path), exist_ok=True)
    with open(unit_path, "w", encoding="utf-8") as handle:
        handle.write(UNIT_TEXT.format(server=config["server"], token=old_token))
    assert analyze_verify(unit_path) == (0, ""), "the unit file given to the test does not verify"
    for host in lab.hosts:
        record = lab.path(host, RECORD)
        if os.path.exists(record):
            os.unlink(record)

    rc, out = lab.playbook("rotate-ca.yml")
    assert rc == 0, "rotate-ca.yml failed:\n" + out[-6000:]

    calls = {host: [" ".join(call["argv"]) for call in lab.systemctl_calls(host)] for host in lab.hosts}
    assert calls["agent1"] == ["daemon-reload", "restart k3s-agent"], calls
    assert calls["agent2"] == ["restart k3s-agent"], calls
    assert calls["server1"] == ["restart k3s"], calls
    assert all(call["rc"] == 0 for host in lab.hosts for call in lab.systemctl_calls(host)), calls

    new_hash = run(["/usr/local/bin/k3s", "lab-hash-ca",
                    lab.path("server1", "/var/lib/rancher/k3s/server/tls/server-ca.crt")]).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", new_hash) and new_hash not in old_token
    with open(unit_path, encoding="utf-8") as handle:
        unit_text = handle.read()
    assert "'K10%s::%s'" % (new_hash, old_token.split("::", 1)[1]) in unit_text
    assert old_token not in unit_text
    assert analyze_verify(unit_path) == (0, ""), "the rewritten unit file does not verify"

    out = lab.exec("server1", ["k3s", "kubectl", "get", "nodes", "-o", "json"]).stdout
    ready = {item["metadata"]["name"]: {c["type"]: c["status"] for c in item["status"]["conditions"]}.get("Ready")
             for item in json.loads(out)["items"]}
    assert ready == {"server1": "True", "agent1": "True", "agent2": "True"}, ready
