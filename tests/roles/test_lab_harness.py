# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The multi-node lab harness (``tests/lab/kubepki_lab.py``): 3 servers + 2 agents reached over real SSH.

Needs root, iproute2, util-linux and openssh-server (scripts/bootstrap.sh installs them); without them
the tests FAIL with the reason, nothing is skipped. The lab uses its own name/bridge/subnet slot
(``kpki-t<N>``, ``10.123.25<N>.0/24``) so it never touches a lab started by hand with the CLI defaults.
The last test tears the lab down and checks that nothing is left; the fixture tears down again (no-op).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
LAB_PY = os.path.normpath(os.path.join(HERE, "..", "lab", "kubepki_lab.py"))
SERVERS = 3
AGENTS = 2
SLOTS = 4
CMD_TIMEOUT = 180
MARKER = "kubepki-lab-marker"


def _load_lab():
    spec = importlib.util.spec_from_file_location("kubepki_lab", LAB_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lab = _load_lab()


def _run(cmd, timeout=CMD_TIMEOUT, **kwargs):
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)
    except subprocess.TimeoutExpired:
        pytest.fail("timed out after %ss: %s" % (timeout, " ".join(cmd)), pytrace=False)
    except FileNotFoundError:
        pytest.fail("command not found: %s" % cmd[0], pytrace=False)
    return None


def _ansible_bin():
    found = shutil.which("ansible") or os.path.join(os.path.dirname(sys.executable), "ansible")
    if not os.access(found, os.X_OK):
        pytest.fail("ansible not found on PATH or next to %s (CI puts the venv's bin on PATH)" % sys.executable, pytrace=False)
    return found


@pytest.fixture(scope="module")
def lab_state(tmp_path_factory):
    """Bring up 3 servers + 2 agents in a free slot; always tear down."""
    try:
        lab.preflight()
    except lab.LabError as exc:
        pytest.fail("the lab harness cannot run here: %s" % exc, pytrace=False)
    base = str(tmp_path_factory.mktemp("lab"))
    state = None
    busy = []
    for slot in range(SLOTS):
        try:
            state = lab.up(base, SERVERS, AGENTS, name="kpki-t%d" % slot, subnet="10.123.%d.0/24" % (250 + slot), owner_pid=os.getpid())
            break
        except lab.LabBusy as exc:
            busy.append(str(exc))
        except lab.LabError as exc:
            pytest.fail("lab up failed: %s" % exc, pytrace=False)
    if state is None:
        pytest.fail("all %d lab slots are busy: %s" % (SLOTS, " | ".join(busy)), pytrace=False)
    try:
        yield state
    finally:
        lab.down(base)


@pytest.fixture(scope="module")
def ansible_env(tmp_path_factory):
    local_tmp = str(tmp_path_factory.mktemp("ansible-local"))
    env = dict(os.environ)
    env.update({
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "True",
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.tree",
        "ANSIBLE_LOCAL_TEMP": local_tmp,
        "ANSIBLE_TIMEOUT": "15",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    })
    return {"env": env, "cwd": local_tmp, "bin": _ansible_bin()}


def adhoc(lab_state, ansible_env, pattern, module, args=None):
    """Run an ad-hoc module over SSH; return {host: result} (rc must be 0), read from the tree callback's files."""
    tree = tempfile.mkdtemp(dir=ansible_env["cwd"], prefix="tree-")
    cmd = [ansible_env["bin"], "-i", lab_state["inventory"], pattern, "-m", module]
    if args:
        cmd += ["-a", args]
    result = _run(cmd, env=dict(ansible_env["env"], ANSIBLE_CALLBACK_TREE_DIR=tree), cwd=ansible_env["cwd"])
    assert result.returncode == 0, "%s -> rc=%d\n%s\n%s" % (" ".join(cmd), result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    results = {}
    for name in os.listdir(tree):
        with open(os.path.join(tree, name), encoding="utf-8") as handle:
            results[name] = json.load(handle)
    return results


def _host(lab_state, name):
    return [host for host in lab_state["hosts"] if host["name"] == name][0]


def test_ping_over_ssh(lab_state, ansible_env):
    results = adhoc(lab_state, ansible_env, "all", "ansible.builtin.ping")
    assert sorted(results) == sorted(host["name"] for host in lab_state["hosts"])
    assert len(results) == SERVERS + AGENTS
    for name, res in results.items():
        assert res.get("ping") == "pong", (name, res)


def test_inventory_groups(lab_state, ansible_env):
    result = _run([ansible_env["bin"] + "-inventory", "-i", lab_state["inventory"], "--list"], env=ansible_env["env"], cwd=ansible_env["cwd"])
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert sorted(data["servers"]["hosts"]) == ["server%d" % index for index in range(1, SERVERS + 1)]
    assert sorted(data["agents"]["hosts"]) == ["agent%d" % index for index in range(1, AGENTS + 1)]
    assert sorted(data["k3s_cluster"]["children"]) == ["agents", "servers"]


def test_own_hostname(lab_state, ansible_env):
    results = adhoc(lab_state, ansible_env, "all", "ansible.builtin.command", "hostname")
    for name, res in results.items():
        assert res["stdout"].strip() == name, (name, res)


def test_private_dirs_are_per_host_bind_mounts(lab_state, ansible_env):
    """Every PRIVATE_DIRS entry on every host is the directory under that host's root in the lab dir (same inode)."""
    results = adhoc(lab_state, ansible_env, "all", "ansible.builtin.command", "stat -c %%i %s" % " ".join(lab.PRIVATE_DIRS))
    assert len(results) == SERVERS + AGENTS
    for name, res in results.items():
        inodes = [int(word) for word in res["stdout"].split()]
        expected = [os.stat(_host(lab_state, name)["root"] + "/root" + directory).st_ino for directory in lab.PRIVATE_DIRS]
        assert inodes == expected, "%s: private dirs %s are not the host's own bind mounts" % (name, lab.PRIVATE_DIRS)


def test_private_var_lib_rancher(lab_state, ansible_env):
    path = "/var/lib/rancher/" + MARKER
    adhoc(lab_state, ansible_env, "server1", "ansible.builtin.copy", "content=server1-only dest=%s mode=0644" % path)
    seen = adhoc(lab_state, ansible_env, "server1:agent1", "ansible.builtin.stat", "path=%s" % path)
    assert seen["server1"]["stat"]["exists"], seen["server1"]
    assert not seen["agent1"]["stat"]["exists"], "agent1 sees %s written on server1" % path
    assert not os.path.exists(path), "the real root sees %s written on server1" % path
    with open(_host(lab_state, "server1")["root"] + "/root" + path, encoding="utf-8") as handle:
        assert handle.read() == "server1-only"


def test_namespace_to_namespace_tcp(lab_state, ansible_env):
    agent1 = _host(lab_state, "agent1")
    resolved = adhoc(lab_state, ansible_env, "server1", "ansible.builtin.command", "getent hosts agent1")["server1"]
    assert resolved["stdout"].split()[0] == agent1["address"], resolved
    res = adhoc(lab_state, ansible_env, "server1", "ansible.builtin.wait_for", "host=agent1 port=22 search_regex=^SSH- timeout=10")["server1"]
    assert not res.get("failed"), res


def test_cli_status(lab_state):
    result = _run([sys.executable, LAB_PY, "status", "--dir", lab_state["base"], "--json"], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout)
    assert sorted(row["name"] for row in rows) == sorted(host["name"] for host in lab_state["hosts"])
    assert all(row["ssh"] and row["rss_kib"] > 0 for row in rows), rows


def test_stale_lab_is_detected_or_cleaned(lab_state, tmp_path_factory):
    """A second lab on a live lab's bridge is refused (exit 3); after a crash (sshd killed, state.json lost) up cleans up."""
    slot = int(lab_state["name"][-1])
    args = ["--servers", "1", "--agents", "1", "--name", "kpki-s%d" % slot, "--subnet", "10.123.%d.0/24" % (240 + slot)]
    first, second = str(tmp_path_factory.mktemp("first")), str(tmp_path_factory.mktemp("second"))
    try:
        result = _run([sys.executable, LAB_PY, "up", "--dir", first] + args, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        busy = _run([sys.executable, LAB_PY, "up", "--dir", second] + args, timeout=60)
        assert busy.returncode == 3 and "is running" in busy.stderr, busy.stdout + busy.stderr
        # Crash: the sshds die and the lab directory (with state.json) is gone; netns, links and mounts points stay.
        crashed = lab.load_state(first)
        lab.stop_pids([host["pid"] for host in crashed["hosts"]])
        shutil.rmtree(first)
        result = _run([sys.executable, LAB_PY, "up", "--dir", second] + args, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "stale" in result.stderr
        rows = lab.status(second)
        assert len(rows) == 2 and all(row["ssh"] for row in rows), rows
    finally:
        result = _run([sys.executable, LAB_PY, "down", "--dir", second], timeout=60)
        if os.path.isdir(first):
            _run([sys.executable, LAB_PY, "down", "--dir", first], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _leftovers(lab.load_state(second)) == []
    assert _leftovers(crashed) == []
    # The module's lab was not touched.
    assert all(row["ssh"] for row in lab.status(lab_state["base"]))


def _leftovers(state):
    """Everything of ``state``'s lab still present on the machine (empty list = clean)."""
    problems = []
    prefix = state["name"] + "-"
    netns = _run(["ip", "-j", "netns", "list"], timeout=30)
    names = [entry["name"] for entry in json.loads(netns.stdout or "[]")]
    problems += ["netns %s" % name for name in names if name.startswith(prefix)]
    links = _run(["ip", "-j", "link", "show"], timeout=30)
    ifnames = [link["ifname"] for link in json.loads(links.stdout or "[]")]
    problems += ["link %s" % name for name in ifnames if name.startswith(prefix) or name == state["bridge"]]
    problems += ["process %d" % pid for pid in lab.pids_with_marker(state["base"])]
    problems += ["sshd %d" % host["pid"] for host in state["hosts"] if host.get("pid") and lab.pid_alive(host["pid"])]
    problems += ["/etc/netns/%s" % host["netns"] for host in state["hosts"] if os.path.exists(os.path.join("/etc/netns", host["netns"]))]
    routes = _run(["ip", "-j", "-4", "route", "show"], timeout=30)
    problems += ["route %s" % route.get("dst") for route in json.loads(routes.stdout or "[]") if route.get("dst") == state["subnet"]]
    if not lab.other_live_labs(state["base"]):
        problems += ["mount point %s" % path for path in state["created_dirs"] if os.path.exists(path)]
        problems += ["marked directory %s" % path for path in lab.marked_dirs()]
    return problems


def test_down_leaves_nothing(lab_state):
    before = lab.load_state(lab_state["base"])
    assert before and before["status"] == "up"
    assert lab.down(lab_state["base"]) is not None
    assert _leftovers(before) == []
    after = lab.load_state(lab_state["base"])
    assert after["status"] == "down"
    # A second down (through the CLI) is a no-op and still leaves nothing.
    result = _run([sys.executable, LAB_PY, "down", "--dir", lab_state["base"]], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _leftovers(before) == []
    status = _run([sys.executable, LAB_PY, "status", "--dir", lab_state["base"], "--json"], timeout=60)
    assert status.returncode == 1 and not any(row["ssh"] for row in json.loads(status.stdout))
