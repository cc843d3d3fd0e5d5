# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Multi-node lab for kubepki.certs: network namespaces on a private bridge, one sshd per "host".

Every host (server1..N, agent1..M) is a network namespace ``<name>-<host>`` with a veth into a bridge,
an address in a private subnet, a default route and ``/etc/netns/<ns>/hosts`` listing all lab hosts
(``ip netns exec`` bind-mounts it over /etc/hosts, so ``server1`` resolves inside every host). Its
sshd runs in its own mount + UTS namespace (``unshare --mount --uts --propagation private``) with the
hostname set and the directories of ``PRIVATE_DIRS`` bind-mounted from a per-host root under the lab
directory, so Ansible reaches real, separate SSH targets without containers.

Usage (root)::

    python3 tests/lab/kubepki_lab.py up --servers 3 --agents 2 --dir /tmp/lab
    ansible -i /tmp/lab/inventory.ini all -m ansible.builtin.ping
    python3 tests/lab/kubepki_lab.py status --dir /tmp/lab
    python3 tests/lab/kubepki_lab.py down --dir /tmp/lab

As a module: ``up(base, servers, agents, ...)`` returns the state dict, ``down(base)`` tears down,
``status(base)`` returns per-host rows. Everything the lab creates is recorded in ``<dir>/state.json``
(written after every step, so ``down`` also cleans a half-built lab). The bridge carries the alias
``kubepki-lab:<state.json path>``; ``up`` uses it to tell a running lab (refused: LabBusy, CLI exit
code 3) from a stale one left by a crashed run (sshds dead, or the ``owner_pid`` given to ``up`` gone:
torn down, then rebuilt). Mount points the harness creates on the real root carry a marker file, so
they are removed even when a crashed lab's state.json is lost. Other errors: LabError, exit code 2.

Managed nodes use ``--python`` (default /usr/bin/python3, on Debian with python3-cryptography). ``up``
checks that interpreter's ``cryptography`` against the collection's minimum (MINIMUM_CRYPTOGRAPHY_VERSION
in plugins/module_utils/_pki/deps.py), records the result in state.json ``node_python`` and prints a note
when it is too old; any interpreter on the real root works (the hosts share /usr and the checkout).

Network traffic stays on the bridge: the root namespace owns ``<subnet>.1``, hosts get ``.11`` onward; the
hosts' default route points at ``<subnet>.254`` (owned by nobody, so nothing is forwarded off the bridge)
and their resolv.conf names only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

# Directories that are private per host: bind-mounted from <dir>/hosts/<host>/root/<path> inside the
# host's mount namespace. The mount points are created on the real root when missing (and removed
# again by ``down``). Extend this tuple for more k3s/RKE2/kubeadm state (e.g. /etc/kubernetes).
PRIVATE_DIRS = (
    "/var/lib/kubepki",  # backups and staging of kubepki.certs: per node, as on real hosts
    "/etc/rancher",
    "/var/lib/rancher",
    "/run/k3s",
    "/var/log/kubepki-lab",
    "/etc/systemd/system",  # per-host unit files (a token in ExecStart); nothing runs systemd in the lab
    "/etc/kubernetes",  # kubeadm: pki, kubeconfigs, static pod manifests
    "/var/lib/kubelet",  # kubeadm: the kubelet's state (the kubelet double's here)
    "/var/lib/etcd",  # kubeadm: the local etcd member's data
    "/root/.kube",  # kubeadm: the operator's copy of admin.conf
)
# Host names and inventory groups per flavour: (server prefix, agent prefix, server group, agent group, cluster group).
# The state keeps the groups "servers"/"agents" whatever the flavour (the probe and teardown read those).
FLAVOURS = {
    "k3s": ("server", "agent", "servers", "agents", "k3s_cluster"),
    "kubeadm": ("cp", "worker", "control_plane", "workers", "kube_cluster"),
}
# Shared directories sshd needs on the real root (privilege separation dir on Debian).
SUPPORT_DIRS = ("/run/sshd",)
NETNS_DIR = "/etc/netns"
MANAGED_DIRS = PRIVATE_DIRS + SUPPORT_DIRS + (NETNS_DIR,)
# File put into every directory the harness creates on the real root (hidden inside the hosts by the
# bind mounts), so a later run can remove mount points of a crashed lab whose state.json is lost.
CREATED_MARKER = ".kubepki-lab-created"
CREATED_XATTR = "trusted.kubepki-lab-created"

DEFAULT_NAME = "kpki"
DEFAULT_SUBNET = "10.123.0.0/24"
DEFAULT_PYTHON = "/usr/bin/python3"
DEFAULT_TIMEOUT = 10.0
HOST_OFFSET = 10  # host k (1-based, servers first) gets network address HOST_OFFSET + k
SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
STATE_FILE = "state.json"
INVENTORY_FILE = "inventory.ini"
ALIAS_PREFIX = "kubepki-lab:"
RUN_NETNS = "/run/netns"
# The collection's own minimum (plugins/module_utils/_pki/deps.py), read at run time; fallback below.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPS_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "plugins", "module_utils", "_pki", "deps.py")
FALLBACK_MIN_CRYPTOGRAPHY = "41.0"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,9}$")
IFNAME_MAX = 15
UNIX_PATH_MAX = 107
CONTROL_TMP_SUFFIX = 17  # ssh binds "<ControlPath>.<16 random chars>" first, then renames it
# Tool -> Debian package that provides it.
REQUIRED_TOOLS = {"ip": "iproute2", "unshare": "util-linux", "mount": "mount", "hostname": "hostname", "ssh": "openssh-client",
                  "ssh-keygen": "openssh-client", "sh": "dash"}

RESOLV_CONF = "# kubepki lab: no resolver; names come from /etc/hosts\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n"

SSHD_CONFIG = """\
# kubepki lab sshd for {host}
ListenAddress {address}
Port {port}
HostKey {host_key}
PidFile none
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 50
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
"""

# Children started by this process: pid -> Popen, so an in-process ``down`` can reap them.
_CHILDREN = {}


class LabError(Exception):
    """The lab cannot be built, inspected or torn down; the message says why."""


class LabBusy(LabError):
    """Another live lab uses the bridge, name or subnet."""


def _log_stderr(message):
    sys.stderr.write("kubepki-lab: %s\n" % message)
    sys.stderr.flush()


def run(cmd, check=True, timeout=30):
    """Run ``cmd`` (a list) and return the CompletedProcess; raise LabError on failure when ``check``."""
    try:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise LabError("command not found: %s" % cmd[0]) from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError("timed out after %ss: %s" % (timeout, " ".join(cmd))) from exc
    if check and result.returncode != 0:
        raise LabError("command failed (rc=%d): %s: %s" % (result.returncode, " ".join(cmd), (result.stderr or result.stdout).strip()))
    return result


def collections_path(tmp_root):
    """ANSIBLE_COLLECTIONS_PATH for the Ansible runs against the lab: the configured one when it holds
    kubepki.certs (a staged run), else a symlink tree under ``tmp_root`` to this checkout, as scripts/demo.sh makes."""
    configured = os.environ.get("ANSIBLE_COLLECTIONS_PATH", "")
    for entry in configured.split(os.pathsep):
        if entry and os.path.isdir(os.path.join(entry, "ansible_collections", "kubepki", "certs")):
            return configured
    tree = os.path.join(tmp_root, "collections")
    os.makedirs(os.path.join(tree, "ansible_collections", "kubepki"), exist_ok=True)
    link = os.path.join(tree, "ansible_collections", "kubepki", "certs")
    if not os.path.islink(link):
        os.symlink(REPO, link)
    return tree


def preflight():
    """Raise LabError unless this machine can run the lab (root, iproute2, util-linux, openssh)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces, bridges and bind mounts need CAP_NET_ADMIN and CAP_SYS_ADMIN)")
    for tool, package in sorted(REQUIRED_TOOLS.items()):
        if shutil.which(tool) is None:
            problems.append("%s not found on PATH (Debian package %s)" % (tool, package))
    if not os.access(SSHD, os.X_OK):
        problems.append("%s not found (Debian: apt-get install openssh-server)" % SSHD)
    if problems:
        raise LabError("; ".join(problems))


# ----------------------------------------------------------------------------------------------------
# state and small helpers


def state_path(base):
    return os.path.join(os.path.abspath(base), STATE_FILE)


def load_state(base):
    """Return the state dict stored in ``base`` or None."""
    path = state_path(base)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def save_state(state):
    path = state_path(state["base"])
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def _read_proc(pid, name):
    try:
        with open("/proc/%d/%s" % (pid, name), "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def pid_alive(pid):
    """True when ``pid`` exists and is not a zombie."""
    stat = _read_proc(pid, "stat")
    if not stat:
        return False
    state = stat.rsplit(b")", 1)[-1].split()
    return bool(state) and state[0] not in (b"Z", b"X")


def pid_matches(pid, marker):
    """True when the live process ``pid`` has ``marker`` in its command line (guards against PID reuse)."""
    return pid_alive(pid) and marker.encode() in _read_proc(pid, "cmdline")


def pid_rss_kib(pid):
    for line in _read_proc(pid, "status").decode(errors="replace").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pids_with_marker(marker):
    """PIDs of live processes whose command line contains ``marker``."""
    found = []
    wanted = marker.encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and wanted in _read_proc(int(entry), "cmdline") and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def _reap(pid):
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout=2)
        except subprocess.TimeoutExpired:
            _CHILDREN[pid] = child
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_pids(pids, grace=3.0):
    """SIGTERM ``pids``, wait up to ``grace`` seconds, SIGKILL the rest, reap own children."""
    pids = [pid for pid in pids if pid_alive(pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for pid in pids:
            _reap(pid)
        if not any(pid_alive(pid) for pid in pids):
            break
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        for pid in pids:
            _reap(pid)
        time.sleep(0.05)
    for pid in pids:
        _reap(pid)


def ip_json(args):
    result = run(["ip", "-j"] + args, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return []
    try:
        return json.loads(result.stdout)
    except ValueError:
        return []


def link_exists(ifname):
    return run(["ip", "link", "show", "dev", ifname], check=False).returncode == 0


def netns_list():
    return [entry.get("name") for entry in ip_json(["netns", "list"])]


def netns_exists(netns):
    return os.path.exists(os.path.join(RUN_NETNS, netns))


def netns_label(netns):
    """The harness label of namespace ``netns`` (alias of its lo), '' when unlabelled or absent."""
    if not netns_exists(netns):
        return ""
    for link in ip_json(["-n", netns, "link", "show", "dev", "lo"]):
        return link.get("ifalias") or ""
    return ""


def netns_pids(netns):
    result = run(["ip", "netns", "pids", netns], check=False)
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def lab_bridges():
    """Bridges created by this harness: list of (ifname, state file path)."""
    found = []
    for link in ip_json(["link", "show", "type", "bridge"]):
        alias = link.get("ifalias") or ""
        if alias.startswith(ALIAS_PREFIX):
            found.append((link.get("ifname"), alias[len(ALIAS_PREFIX):]))
    return found


def pid_start_time(pid):
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), or None."""
    fields = _read_proc(pid, "stat").rsplit(b")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def lab_alive(state):
    """True when any sshd of the lab described by ``state`` still runs (and its recorded owner process, if any)."""
    if not state or state.get("status") == "down":
        return False
    owner = state.get("owner")
    if owner and (not pid_alive(owner["pid"]) or pid_start_time(owner["pid"]) != owner["start"]):
        return False
    return any(host.get("pid") and pid_matches(host["pid"], host["sshd_config"]) for host in state.get("hosts", []))


def other_live_labs(base):
    """State dicts of live labs other than the one in ``base``."""
    labs = []
    mine = state_path(base)
    for _bridge, path in lab_bridges():
        if os.path.abspath(path) == mine:
            continue
        other = load_state(os.path.dirname(path))
        if lab_alive(other):
            labs.append(other)
    return labs


def tcp_banner(address, port=SSH_PORT, timeout=1.0):
    """Return the first line the server sends (the SSH banner) or '' when it does not answer."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            data = conn.recv(256)
    except OSError:
        return ""
    return data.decode(errors="replace").splitlines()[0] if data else ""


# ----------------------------------------------------------------------------------------------------
# planning


def plan(base, servers, agents, name, bridge, subnet, flavour="k3s"):
    """Validate the arguments and return the initial state dict (nothing is created)."""
    if not NAME_RE.match(name):
        raise LabError("lab name %r must match %s (it prefixes netns and interface names)" % (name, NAME_RE.pattern))
    if servers < 1 or agents < 0:
        raise LabError("need --servers >= 1 and --agents >= 0")
    if len(bridge) > IFNAME_MAX:
        raise LabError("bridge name %r is longer than %d characters" % (bridge, IFNAME_MAX))
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as exc:
        raise LabError("bad --subnet %r: %s" % (subnet, exc)) from exc
    if net.version != 4:
        raise LabError("--subnet must be IPv4")
    if flavour not in FLAVOURS:
        raise LabError("unknown flavour %r (one of %s)" % (flavour, ", ".join(sorted(FLAVOURS))))
    server_prefix, agent_prefix = FLAVOURS[flavour][:2]
    names = ["%s%d" % (server_prefix, index) for index in range(1, servers + 1)]
    names += ["%s%d" % (agent_prefix, index) for index in range(1, agents + 1)]
    if HOST_OFFSET + len(names) >= net.num_addresses - 2:
        raise LabError("subnet %s is too small for %d hosts" % (subnet, len(names)))
    base = os.path.abspath(base)
    control_dir = os.path.join(base, "cp")
    if len(control_dir) + len("/255.255.255.255") + CONTROL_TMP_SUFFIX > UNIX_PATH_MAX:
        raise LabError("lab directory %s is too long for ssh ControlPath sockets (limit %d)" % (base, UNIX_PATH_MAX))
    hosts = []
    for index, host in enumerate(names, start=1):
        veth = "%s-v%d" % (name, index)
        if len(veth) > IFNAME_MAX:
            raise LabError("interface name %s is longer than %d characters: use a shorter --name" % (veth, IFNAME_MAX))
        root = os.path.join(base, "hosts", host)
        hosts.append({
            "name": host,
            "group": "servers" if index <= servers else "agents",
            "netns": "%s-%s" % (name, host),
            "veth": veth,
            "address": str(net[HOST_OFFSET + index]),
            "root": root,
            "sshd_config": os.path.join(root, "ssh", "sshd_config"),
            "sshd_log": os.path.join(root, "sshd.log"),
            "pid": None,
            "netns_created": False,
            "veth_created": False,
            "etc_netns_created": False,
        })
    return {
        "version": 1,
        "flavour": flavour,
        "status": "planned",
        "base": base,
        "name": name,
        "bridge": bridge,
        "bridge_created": False,
        "subnet": str(net),
        "gateway": str(net[1]),
        "route_via": str(net[-2]),
        "prefixlen": net.prefixlen,
        "key_file": os.path.join(base, "keys", "id_ed25519"),
        "control_dir": control_dir,
        "inventory": os.path.join(base, INVENTORY_FILE),
        "private_dirs": list(PRIVATE_DIRS),
        "created_dirs": [],
        "run_netns_created": False,
        "hosts": hosts,
        "timings": {},
    }


def _overlaps(net, prefix):
    try:
        other = ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        return False
    return other.version == 4 and other.prefixlen > 0 and net.overlaps(other)


def subnet_conflicts(subnet):
    """Addresses or routes of the root namespace that overlap ``subnet``."""
    net = ipaddress.ip_network(subnet)
    conflicts = []
    for link in ip_json(["-4", "addr", "show"]):
        for addr in link.get("addr_info", []):
            if _overlaps(net, "%s/%s" % (addr.get("local"), addr.get("prefixlen"))):
                conflicts.append("address %s/%s on %s" % (addr.get("local"), addr.get("prefixlen"), link.get("ifname")))
    for route in ip_json(["-4", "route", "show"]):
        dst = route.get("dst", "")
        if dst and dst != "default" and _overlaps(net, dst):
            conflicts.append("route %s dev %s" % (dst, route.get("dev")))
    return conflicts


def sweep_names(name, bridge, log):
    """Remove leftovers that follow this lab's naming scheme (no state file needed)."""
    host_re = re.compile(r"^%s-(server|agent)[0-9]+$" % re.escape(name))
    veth_re = re.compile(r"^%s-v[0-9]+$" % re.escape(name))
    for netns in netns_list():
        if netns and host_re.match(netns):
            log("removing stale netns %s" % netns)
            stop_pids(netns_pids(netns))
            run(["ip", "netns", "del", netns], check=False)
    for link in ip_json(["link", "show"]):
        ifname = link.get("ifname", "")
        if veth_re.match(ifname) or ifname == bridge:
            log("removing stale link %s" % ifname)
            run(["ip", "link", "del", ifname], check=False)
    if os.path.isdir(NETNS_DIR):
        for entry in os.listdir(NETNS_DIR):
            if host_re.match(entry):
                shutil.rmtree(os.path.join(NETNS_DIR, entry), ignore_errors=True)


def clear_stale(state, log):
    """Refuse when a live lab is in the way; tear down stale labs of the same bridge, name or dir."""
    net = ipaddress.ip_network(state["subnet"])
    own = load_state(state["base"])
    if own and own.get("status") != "down":
        if lab_alive(own):
            raise LabBusy("a lab is already up in %s: run 'down --dir %s' first" % (state["base"], state["base"]))
        log("tearing down the stale lab recorded in %s" % state_path(state["base"]))
        teardown(own, log)
    for bridge, path in lab_bridges():
        other = load_state(os.path.dirname(path))
        same = bridge == state["bridge"] or (other is not None and (other.get("name") == state["name"] or net.overlaps(ipaddress.ip_network(other["subnet"]))))
        if not same:
            continue
        if lab_alive(other):
            raise LabBusy("lab %r is running on bridge %s with subnet %s (state %s): run 'down --dir %s' or pick another --name/--bridge/--subnet"
                          % (other["name"], bridge, other["subnet"], path, other["base"]))
        log("tearing down the stale lab on bridge %s (state %s)" % (bridge, path))
        if other is not None:
            teardown(other, log)
        run(["ip", "link", "del", bridge], check=False)
    if link_exists(state["bridge"]):
        raise LabBusy("bridge %s exists and was not created by this harness: pick another --bridge" % state["bridge"])
    sweep_names(state["name"], state["bridge"], log)
    conflicts = subnet_conflicts(state["subnet"])
    if conflicts:
        raise LabBusy("subnet %s is in use on this machine (%s): pick another --subnet" % (state["subnet"], "; ".join(conflicts)))


# ----------------------------------------------------------------------------------------------------
# up


def _mark(directory):
    with open(os.path.join(directory, CREATED_MARKER), "w", encoding="utf-8") as handle:
        handle.write("created by tests/lab/kubepki_lab.py; removed with this directory by 'down'\n")


def _xattr_mark(path):
    """Mark ``path`` as harness-created without putting a file in it (for /run/netns, whose entries are netns names)."""
    try:
        os.setxattr(path, CREATED_XATTR, b"1")
    except OSError:
        pass


def _xattr_marked(path):
    try:
        return os.getxattr(path, CREATED_XATTR) == b"1"
    except OSError:
        return False


def marked_dirs():
    """Directories of MANAGED_DIRS (and their parents) that carry the harness's creation marker."""
    found = set()
    for path in MANAGED_DIRS:
        current = path
        while current not in ("/", ""):
            if os.path.isfile(os.path.join(current, CREATED_MARKER)):
                found.add(current)
            current = os.path.dirname(current)
    return sorted(found)


def _makedirs_recorded(path, state):
    """Create ``path`` and missing parents, mark and record each one; adopt marked ones of a lost earlier lab."""
    missing = []
    current = path
    while not os.path.exists(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        os.mkdir(directory, 0o755)
        _mark(directory)
        state["created_dirs"].append(directory)
        save_state(state)
    for directory in marked_dirs():
        if directory not in state["created_dirs"]:
            state["created_dirs"].append(directory)
            save_state(state)


def _write(path, text, mode=0o644):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)


def _keygen(path, comment):
    for stale in (path, path + ".pub"):
        if os.path.exists(stale):
            os.unlink(stale)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])


def _hosts_file(state):
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback", "%s kubepki-lab-gateway" % state["gateway"]]
    lines += ["%s %s" % (host["address"], host["name"]) for host in state["hosts"]]
    return "\n".join(lines) + "\n"


def _host_script(host):
    """Shell run inside ``ip netns exec``+``unshare``: private bind mounts, hostname, then exec sshd."""
    steps = ["set -e"]
    for directory in PRIVATE_DIRS:
        steps.append("mount --bind %s %s" % (shlex.quote(host["root"] + "/root" + directory), shlex.quote(directory)))
    steps.append("hostname %s" % shlex.quote(host["name"]))
    steps.append("exec %s -D -e -f %s" % (SSHD, shlex.quote(host["sshd_config"])))
    return "; ".join(steps)


def _prepare_host(state, host, public_key):
    ssh_dir = os.path.join(host["root"], "ssh")
    os.makedirs(ssh_dir, exist_ok=True)
    for directory in PRIVATE_DIRS:
        os.makedirs(host["root"] + "/root" + directory, exist_ok=True)
    host_key = os.path.join(ssh_dir, "ssh_host_ed25519_key")
    _keygen(host_key, "root@" + host["name"])
    authorized_keys = os.path.join(ssh_dir, "authorized_keys")
    _write(authorized_keys, public_key, 0o600)
    _write(host["sshd_config"], SSHD_CONFIG.format(host=host["name"], address=host["address"], port=SSH_PORT,
                                                   host_key=host_key, authorized_keys=authorized_keys))
    run([SSHD, "-t", "-f", host["sshd_config"]])
    etc_dir = os.path.join(NETNS_DIR, host["netns"])
    os.makedirs(etc_dir, exist_ok=True)
    host["etc_netns_created"] = True
    _write(os.path.join(etc_dir, "hosts"), _hosts_file(state))
    _write(os.path.join(etc_dir, "hostname"), host["name"] + "\n")
    # DNS stays on loopback (nothing listens: instant failure instead of a query to the host's resolver).
    _write(os.path.join(etc_dir, "resolv.conf"), RESOLV_CONF)


def _network_host(state, host):
    netns = host["netns"]
    run(["ip", "netns", "add", netns])
    host["netns_created"] = True
    # Label the namespace itself (alias of its lo): names get reused by newer labs, nsfs inodes get reused too.
    run(["ip", "-n", netns, "link", "set", "lo", "alias", ALIAS_PREFIX + state_path(state["base"])])
    if state["run_netns_created"]:
        _xattr_mark(RUN_NETNS)
    save_state(state)
    run(["ip", "link", "add", host["veth"], "type", "veth", "peer", "name", "eth0", "netns", netns])
    host["veth_created"] = True
    save_state(state)
    run(["ip", "link", "set", host["veth"], "master", state["bridge"], "up"])
    run(["ip", "-n", netns, "addr", "add", "%s/%d" % (host["address"], state["prefixlen"]), "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    # Default route (Ansible's default_ipv4 facts need one) via an address nobody owns: traffic for
    # anything off the bridge dies in the namespace instead of reaching the root namespace's forwarding.
    run(["ip", "-n", netns, "route", "add", "default", "via", state["route_via"]])


def _start_sshd(host):
    cmd = ["ip", "netns", "exec", host["netns"], "unshare", "--mount", "--uts", "--propagation", "private",
           "sh", "-c", _host_script(host)]
    with open(host["sshd_log"], "ab") as log_handle:
        # The sshd outlives this call (and, for the CLI, this process): no context manager on purpose.
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_handle, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                                 start_new_session=True, close_fds=True)
    _CHILDREN[child.pid] = child
    host["pid"] = child.pid


def _log_tail(path, lines=8):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return " | ".join(handle.read().strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(state, timeout):
    """Wait until every sshd sends its banner; raise LabError after ``timeout`` seconds or if one dies."""
    pending = list(state["hosts"])
    deadline = time.monotonic() + timeout
    while pending:
        for host in list(pending):
            if not pid_alive(host["pid"]):
                raise LabError("sshd of %s exited: %s" % (host["name"], _log_tail(host["sshd_log"])))
            if tcp_banner(host["address"], timeout=0.5).startswith("SSH-"):
                pending.remove(host)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise LabError("sshd did not answer within %ss on: %s" % (timeout, ", ".join(host["name"] for host in pending)))
        time.sleep(0.05)


def check_node_python(python):
    """Describe ``python`` as a managed-node interpreter: exists, version, cryptography and whether it is new enough."""
    minimum = min_cryptography()
    info = {"path": python, "exists": os.access(python, os.X_OK), "version": None, "cryptography": None, "cryptography_min": minimum,
            "cryptography_ok": False}
    if not info["exists"]:
        return info
    probe = ("import sys; print('%d.%d.%d' % sys.version_info[:3])\n"
             "try:\n import cryptography\n print(cryptography.__version__)\nexcept ImportError:\n print('')")
    result = run([python, "-c", probe], check=False, timeout=30)
    lines = result.stdout.splitlines()
    if lines:
        info["version"] = lines[0]
    if len(lines) > 1 and lines[1]:
        info["cryptography"] = lines[1]
        info["cryptography_ok"] = _version_tuple(lines[1]) >= _version_tuple(minimum)
    return info


def min_cryptography():
    """The minimum cryptography version the collection's modules accept (from deps.py when readable)."""
    try:
        with open(DEPS_PY, encoding="utf-8") as handle:
            match = re.search(r"^MINIMUM_CRYPTOGRAPHY_VERSION\s*=\s*[\"']([0-9.]+)[\"']", handle.read(), re.MULTILINE)
    except OSError:
        match = None
    return match.group(1) if match else FALLBACK_MIN_CRYPTOGRAPHY


def _version_tuple(version):
    return tuple(int("".join(ch for ch in piece if ch.isdigit()) or 0) for piece in version.split(".")[:3])


def write_inventory(state, python):
    common = ("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 -o ControlMaster=auto -o ControlPath=%s/%%h"
              % state["control_dir"])
    lines = ["# kubepki lab %s, generated by tests/lab/kubepki_lab.py up; valid until 'down --dir %s'" % (state["name"], state["base"])]
    server_group, agent_group, cluster_group = FLAVOURS[state.get("flavour", "k3s")][2:]
    for group, title in (("servers", server_group), ("agents", agent_group)):
        lines.append("[%s]" % title)
        lines += ["%s ansible_host=%s kubepki_lab_netns=%s kubepki_lab_root=%s/root" % (host["name"], host["address"], host["netns"], host["root"])
                  for host in state["hosts"] if host["group"] == group]
        lines.append("")
    lines += ["[%s:children]" % cluster_group, server_group, agent_group, "", "[all:vars]",
              "ansible_user=root",
              "ansible_ssh_private_key_file=%s" % state["key_file"],
              "ansible_ssh_common_args='%s'" % common,
              "ansible_python_interpreter=%s" % python, ""]
    _write(state["inventory"], "\n".join(lines))


def up(base, servers, agents, name=DEFAULT_NAME, bridge=None, subnet=DEFAULT_SUBNET, python=DEFAULT_PYTHON, timeout=DEFAULT_TIMEOUT,
       owner_pid=None, log=_log_stderr, flavour="k3s"):
    """Build the lab in ``base`` and return its state dict. Raises LabBusy/LabError; a failed ``up`` tears down what it built.

    ``owner_pid``: a process whose death makes the lab stale even while its sshds run (a pytest run that
    was killed); without it the lab counts as live as long as one of its sshds runs.
    """
    started = time.monotonic()
    preflight()
    state = plan(base, servers, agents, name, bridge or "%s-br0" % name, subnet, flavour)
    if owner_pid:
        state["owner"] = {"pid": owner_pid, "start": pid_start_time(owner_pid)}
    os.makedirs(state["base"], exist_ok=True)
    clear_stale(state, log)
    # A fresh lab starts with empty private directories, new keys and no old control sockets.
    for directory in ("keys", "cp", "hosts"):
        shutil.rmtree(os.path.join(state["base"], directory), ignore_errors=True)
        os.makedirs(os.path.join(state["base"], directory))
    state["status"] = "starting"
    state["run_netns_created"] = not os.path.isdir(RUN_NETNS)
    save_state(state)
    built = False
    try:
        for directory in MANAGED_DIRS:
            _makedirs_recorded(directory, state)
        _keygen(state["key_file"], "kubepki-lab")
        with open(state["key_file"] + ".pub", encoding="utf-8") as handle:
            public_key = handle.read()
        run(["ip", "link", "add", state["bridge"], "type", "bridge"])
        state["bridge_created"] = True
        save_state(state)
        run(["ip", "link", "set", state["bridge"], "alias", ALIAS_PREFIX + state_path(state["base"])])
        run(["ip", "addr", "add", "%s/%d" % (state["gateway"], state["prefixlen"]), "dev", state["bridge"]])
        run(["ip", "link", "set", state["bridge"], "up"])
        for host in state["hosts"]:
            _network_host(state, host)
            _prepare_host(state, host, public_key)
            save_state(state)
        for host in state["hosts"]:
            _start_sshd(host)
        save_state(state)
        wait_ready(state, timeout)
        node_python = check_node_python(python)
        state["node_python"] = node_python
        if not node_python["exists"]:
            raise LabError("node interpreter %s does not exist (use --python)" % python)
        if not node_python["cryptography_ok"]:
            log("note: %s has cryptography %s; the kubepki.certs modules need >= %s on the node (use --python with a newer one)"
                % (python, node_python["cryptography"] or "(missing)", node_python["cryptography_min"]))
        write_inventory(state, python)
        state["status"] = "up"
        state["timings"]["up_seconds"] = round(time.monotonic() - started, 3)
        save_state(state)
        built = True
    finally:
        if not built:
            log("up failed: tearing down what was built")
            teardown(state, log)
    return state


# ----------------------------------------------------------------------------------------------------
# down


def _close_control_sockets(state):
    control_dir = state["control_dir"]
    if os.path.isdir(control_dir):
        for entry in sorted(os.listdir(control_dir)):
            sock = os.path.join(control_dir, entry)
            run(["ssh", "-F", "/dev/null", "-o", "ControlPath=" + sock, "-O", "exit", "kubepki-lab"], check=False, timeout=5)
    # ssh multiplexers that ignored -O exit (or were started with other options) still name the socket path.
    stop_pids(pids_with_marker(control_dir + "/"), grace=2.0)
    if os.path.isdir(control_dir):
        for entry in os.listdir(control_dir):
            try:
                os.unlink(os.path.join(control_dir, entry))
            except OSError:
                pass


def _remove_shared_dirs(state, log):
    """Remove the mount points the harness created (recorded or marked) unless another live lab still uses them."""
    created = sorted(set(path for path in state.get("created_dirs", []) if os.path.isdir(path)) | set(marked_dirs()),
                     key=lambda path: (-path.count("/"), path))
    if not created and not state.get("run_netns_created") and not _xattr_marked(RUN_NETNS):
        return
    others = other_live_labs(state["base"])
    if others:
        log("leaving %s in place: still used by the lab in %s" % (", ".join(created) or RUN_NETNS, others[0]["base"]))
        return
    for path in created:
        marker = os.path.join(path, CREATED_MARKER)
        had_marker = os.path.isfile(marker)
        try:
            if had_marker:
                os.unlink(marker)
            os.rmdir(path)
        except OSError as exc:
            log("could not remove %s: %s" % (path, exc))
            if had_marker and os.path.isdir(path) and not os.path.exists(marker):
                _mark(path)
    if (state.get("run_netns_created") or _xattr_marked(RUN_NETNS)) and os.path.isdir(RUN_NETNS) and not os.listdir(RUN_NETNS):
        run(["umount", RUN_NETNS], check=False)
        try:
            os.rmdir(RUN_NETNS)
        except OSError:
            pass


def teardown(state, log=_log_stderr):
    """Remove everything ``state`` records; tolerant of missing pieces, so it is idempotent."""
    started = time.monotonic()
    hosts = state.get("hosts", [])
    _close_control_sockets(state)
    stop_pids([host["pid"] for host in hosts if host.get("pid") and pid_matches(host["pid"], host["sshd_config"])])
    # Only namespaces labelled with this lab's state path: a newer lab may reuse the names after this one
    # was declared stale.
    label = ALIAS_PREFIX + state_path(state["base"])
    ours = {}
    for host in hosts:
        ours[host["netns"]] = netns_label(host["netns"]) == label
        if ours[host["netns"]]:
            stop_pids(netns_pids(host["netns"]))
    # The lab's own processes, wherever they are (sessions of a crashed lab, sh wrappers).
    stop_pids(pids_with_marker(os.path.join(state["base"], "hosts") + "/"))
    for host in hosts:
        if ours[host["netns"]]:
            if link_exists(host["veth"]):
                run(["ip", "link", "del", host["veth"]], check=False)
            run(["ip", "netns", "del", host["netns"]], check=False)
        if ours[host["netns"]] or not netns_exists(host["netns"]):
            shutil.rmtree(os.path.join(NETNS_DIR, host["netns"]), ignore_errors=True)
    if state.get("bridge") and link_exists(state["bridge"]):
        alias = ""
        for link in ip_json(["link", "show", "dev", state["bridge"]]):
            alias = link.get("ifalias") or ""
        if alias == ALIAS_PREFIX + state_path(state["base"]) or (not alias and state.get("bridge_created")):
            run(["ip", "link", "del", state["bridge"]], check=False)
    _remove_shared_dirs(state, log)
    for host in hosts:
        host["pid"] = None
    state["status"] = "down"
    state.setdefault("timings", {})["down_seconds"] = round(time.monotonic() - started, 3)
    if os.path.isdir(state["base"]):
        save_state(state)
    return state


def down(base, log=_log_stderr):
    """Tear down the lab recorded in ``base``; a no-op (returns None) when there is none or it is already down."""
    state = load_state(base)
    if state is None:
        log("no lab state in %s: nothing to do" % os.path.abspath(base))
        return None
    if state.get("status") == "down":
        # A finished teardown; names it used may belong to a newer lab by now.
        log("lab in %s is already down" % state["base"])
        return None
    return teardown(state, log)


# ----------------------------------------------------------------------------------------------------
# status


def status(base):
    """Rows describing each host of the lab in ``base`` (empty list when there is no lab)."""
    state = load_state(base)
    if state is None:
        return []
    rows = []
    for host in state["hosts"]:
        pid = host.get("pid")
        alive = bool(pid) and pid_matches(pid, host["sshd_config"])
        banner = tcp_banner(host["address"]) if alive else ""
        rows.append({
            "name": host["name"],
            "group": host["group"],
            "netns": host["netns"],
            "address": host["address"],
            "pid": pid if alive else None,
            "rss_kib": pid_rss_kib(pid) if alive else 0,
            "ssh": banner.startswith("SSH-"),
            "banner": banner,
        })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description="kubepki.certs multi-node lab: netns + bridge + one sshd per host")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="build the lab and write <dir>/inventory.ini and <dir>/state.json")
    p_up.add_argument("--servers", type=int, default=1)
    p_up.add_argument("--agents", type=int, default=0)
    p_up.add_argument("--dir", required=True, help="lab directory (keys, per-host roots, inventory, state)")
    p_up.add_argument("--name", default=DEFAULT_NAME, help="prefix of netns and veth names (default %(default)s)")
    p_up.add_argument("--bridge", default=None, help="bridge name (default <name>-br0)")
    p_up.add_argument("--subnet", default=DEFAULT_SUBNET, help="private IPv4 subnet (default %(default)s)")
    p_up.add_argument("--python", default=DEFAULT_PYTHON, help="ansible_python_interpreter for the hosts (default %(default)s)")
    p_up.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for every sshd (default %(default)s)")
    p_up.add_argument("--flavour", choices=sorted(FLAVOURS), default="k3s",
                      help="host names and inventory groups: server/agent (k3s, RKE2) or cp/worker (kubeadm)")
    p_down = sub.add_parser("down", help="tear the lab down (idempotent)")
    p_down.add_argument("--dir", required=True)
    p_status = sub.add_parser("status", help="hosts, addresses and whether each sshd answers")
    p_status.add_argument("--dir", required=True)
    p_status.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            state = up(args.dir, args.servers, args.agents, name=args.name, bridge=args.bridge, subnet=args.subnet,
                       python=args.python, timeout=args.timeout, flavour=args.flavour)
            print("lab %s up: %d hosts on %s (%s) in %.2fs; inventory %s"
                  % (state["name"], len(state["hosts"]), state["bridge"], state["subnet"], state["timings"]["up_seconds"], state["inventory"]))
            return 0
        if args.command == "down":
            state = down(args.dir)
            if state is not None:
                print("lab %s down in %.2fs" % (state["name"], state["timings"]["down_seconds"]))
            return 0
        rows = status(args.dir)
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no lab in %s" % os.path.abspath(args.dir))
        else:
            line = "%-10s %-8s %-18s %-15s %-8s %-8s %s"
            print(line % ("HOST", "GROUP", "NETNS", "ADDRESS", "PID", "RSS_KiB", "SSH"))
            for row in rows:
                print(line % (row["name"], row["group"], row["netns"], row["address"], row["pid"] or "-", row["rss_kib"] or "-", "yes" if row["ssh"] else "no"))
        return 0 if rows and all(row["ssh"] for row in rows) else 1
    except LabBusy as exc:
        _log_stderr("error: %s" % exc)
        return 3
    except LabError as exc:
        _log_stderr("error: %s" % exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
