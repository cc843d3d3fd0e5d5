# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Restart the static pods whose certificates or kubeconfigs changed after they started, the way the kubelet restarts
a static pod: its manifest changes (an annotation ``kubepki.io/restartedAt``, as ``kubectl rollout restart`` sets
``kubectl.kubernetes.io/restartedAt``), the kubelet stops the old container and starts a new one.

plan → apply → report → diff. A pod is stale when a process of it started before the newest of the files its command
line names (``--flag=/path`` of a certificate, key or kubeconfig); only stale pods restart, so a rerun restarts
nothing. A pod's processes are those of its binary in this host's network namespace (kubeadm's static pods all run
with hostNetwork). Apply waits for the old processes to end, a new one to start, and the manifest's own probe
(readiness, else startup, else liveness) to answer 2xx, as the kubelet would judge it.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import Change, summary_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError, PKIError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import PRIVATE_FILE_MODE, atomic_write, file_mode, read_bytes, write_backup
from ansible_collections.kubepki.certs.plugins.module_utils._pki.trees import backup_tree

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML comes with Ansible on most nodes; say so when it does not
    yaml = None

RESTART, CURRENT, ABSENT = "restart", "current", "absent"
ANNOTATION = "kubepki.io/restartedAt"
INPUT_SUFFIXES = (".crt", ".key", ".pem", ".pub", ".conf")
PROBES = ("readinessProbe", "startupProbe", "livenessProbe")  # the first one a container has judges "ready"


class RestartTimeout(PKIError):
    pass


@dataclass(frozen=True)
class Probe:
    url: str


@dataclass
class PodRestart:
    name: str
    manifest: str
    binary: str
    status: str
    reason: str
    probe: Probe | None = None
    old_pids: list = field(default_factory=list)
    new_pid: int | None = None
    waited_seconds: float | None = None


# --- processes ------------------------------------------------------------------------------------------------------

# A start time read from /proc is the boot time (from /proc/uptime, truncated to 10 ms) plus the start in clock ticks
# (truncated to 1/CLK_TCK), so it can sit a few ticks either side of the truth. A file written within that window of
# the start cannot be ordered against it; the safe answer is "restart".
START_TIME_UNCERTAINTY = 0.01 + 2.0 / os.sysconf("SC_CLK_TCK")


def boot_time(proc: str = "/proc") -> float:
    """Boot time to the hundredth of a second (/proc/stat's btime is whole seconds: too coarse to order a process start
    against a file written the same second)."""
    with open(os.path.join(proc, "uptime"), encoding="ascii") as handle:
        return time.time() - float(handle.read().split()[0])


def process_start(pid: int, proc: str = "/proc") -> float:
    """When process ``pid`` started (epoch seconds, to the clock tick)."""
    with open(os.path.join(proc, str(pid), "stat"), encoding="utf-8", errors="replace") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return boot_time(proc) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def pod_processes(binary: str, proc: str = "/proc") -> list:
    """PIDs running ``binary`` (argv[0]'s base name) in this process's network namespace."""
    own_netns = os.stat(os.path.join(proc, "self", "ns", "net")).st_ino
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as handle:
                argv0 = handle.read().split(b"\0", 1)[0].decode("utf-8", "replace")
            if os.path.basename(argv0) == binary and os.stat(os.path.join(proc, entry, "ns", "net")).st_ino == own_netns:
                found.append(int(entry))
        except OSError:
            continue  # gone meanwhile, or a kernel thread
    return sorted(found)


# --- manifests -------------------------------------------------------------------------------------------------------

def load_manifest(path: str) -> tuple:
    """(text, the single container) of a static pod manifest."""
    if yaml is None:
        raise InvalidInputError("PyYAML is needed on the node to read %s" % path, path=path)
    text = read_bytes(path, what="static pod manifest").decode("utf-8")
    try:
        pod = yaml.safe_load(text)
        containers = pod["spec"]["containers"]
    except (yaml.YAMLError, KeyError, TypeError):
        raise InvalidInputError("%s is not a Pod manifest with spec.containers" % path, path=path) from None
    if len(containers) != 1 or not containers[0].get("command"):
        raise InvalidInputError("%s: expected one container with a command (kubeadm's static pods)" % path, path=path)
    return text, containers[0]


def pod_inputs(container: dict) -> list:
    """The certificate, key and kubeconfig files named by ``--flag=/path`` on the command line."""
    paths = []
    for argument in list(container.get("command") or []) + list(container.get("args") or []):
        value = str(argument).split("=", 1)[1] if str(argument).startswith("--") and "=" in str(argument) else ""
        if value.startswith("/") and value.endswith(INPUT_SUFFIXES):
            paths.append(value)
    return paths


def probe_of(container: dict, default_host: str = "127.0.0.1") -> Probe | None:
    """The URL of the container's readiness (else startup, else liveness) httpGet probe; named ports resolved."""
    for kind in PROBES:
        get = (container.get(kind) or {}).get("httpGet")
        if not get:
            continue
        port = get.get("port")
        if not str(port).isdigit():
            ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
            port = ports.get(port)
        if port is None:
            return None
        scheme = str(get.get("scheme") or "HTTP").lower()
        return Probe("%s://%s:%s%s" % (scheme, get.get("host") or default_host, port, get.get("path") or "/"))
    return None


def annotate(text: str, value: str, path: str) -> str:
    """The manifest with ``ANNOTATION: "value"`` under metadata.annotations, every other line kept."""
    line = '    %s: "%s"\n' % (ANNOTATION, value)
    existing = re.compile(r"^    %s:.*\n" % re.escape(ANNOTATION), re.MULTILINE)
    if existing.search(text):
        return existing.sub(lambda _match: line, text, count=1)
    if re.search(r"^  annotations:[ \t]*\n", text, re.MULTILINE):
        return re.sub(r"^  annotations:[ \t]*\n", lambda match: match.group(0) + line, text, count=1, flags=re.MULTILINE)
    if re.search(r"^metadata:[ \t]*\n", text, re.MULTILINE):
        return re.sub(r"^metadata:[ \t]*\n", lambda match: match.group(0) + "  annotations:\n" + line, text, count=1,
                      flags=re.MULTILINE)
    raise InvalidInputError("%s has no block-style metadata to annotate" % path, path=path)


# --- plan, apply, report ---------------------------------------------------------------------------------------------

def _processes_appearing(binary: str, proc: str, wait: float, poll: float = 0.5) -> list:
    """The pod's processes, waiting up to ``wait`` seconds for one: the kubelet may be between stopping the old process
    and starting the new one (a manifest that was just changed, by this rotation or anyone)."""
    deadline = time.monotonic() + wait
    while True:
        pids = pod_processes(binary, proc)
        if pids or time.monotonic() >= deadline:
            return pids
        time.sleep(poll)


def plan_restart(manifests_dir: str, name: str, *, force: bool = False, proc: str = "/proc",
                 appear_timeout: float = 0.0) -> PodRestart:
    path = os.path.join(manifests_dir, name + ".yaml")
    if not os.path.exists(path):
        return PodRestart(name, path, "", ABSENT, "%s does not exist (not a static pod on this node)" % path)
    _text, container = load_manifest(path)
    binary = os.path.basename(str(container["command"][0]))
    pids = _processes_appearing(binary, proc, appear_timeout)
    if not pids:
        raise InvalidInputError("no %s process runs on this node although %s exists (waited %d s): the kubelet does not "
                                "run this static pod; fix that before restarting anything" % (binary, path, appear_timeout),
                                path=path)
    mtimes = {p: os.stat(p).st_mtime for p in pod_inputs(container) if os.path.exists(p)}
    newest = max(mtimes.values(), default=0.0)
    started = min(process_start(pid, proc) for pid in pids)
    probe = probe_of(container)
    if force:
        return PodRestart(name, path, binary, RESTART, "restart asked for", probe, pids)
    if started < newest + START_TIME_UNCERTAINTY:
        changed = sorted(p for p, mtime in mtimes.items() if mtime > started - START_TIME_UNCERTAINTY)
        return PodRestart(name, path, binary, RESTART, "started before %s changed" % ", ".join(changed), probe, pids)
    return PodRestart(name, path, binary, CURRENT, "started after its certificates and kubeconfigs were written", probe, pids)


def plan_restarts(manifests_dir: str, names, *, force: bool = False, proc: str = "/proc", appear_timeout: float = 0.0) -> list:
    return [plan_restart(manifests_dir, name, force=force, proc=proc, appear_timeout=appear_timeout) for name in names]


def wait_restarted(restart: PodRestart, *, since: float, timeout: float, probe_ok, proc: str = "/proc", poll: float = 0.5,
                   clock=time.monotonic, sleep=time.sleep) -> None:
    """Wait until the old processes are gone, a new one runs (started after ``since``) and the probe answers
    (``probe_ok(url) -> bool``, module_edge.probe_ok: the HTTP client is Ansible's, at the module's edge)."""
    deadline = clock() + timeout
    begun = clock()
    while True:
        pids = pod_processes(restart.binary, proc)
        fresh = [pid for pid in pids if pid not in restart.old_pids and process_start(pid, proc) >= since - 0.5]
        if fresh and not set(pids) & set(restart.old_pids) and (restart.probe is None or probe_ok(restart.probe.url)):
            restart.new_pid = fresh[0]
            restart.waited_seconds = round(clock() - begun, 1)
            return
        if clock() > deadline:
            lingering = sorted(set(pids) & set(restart.old_pids))
            if lingering:
                state = "old process(es) %s still running" % lingering
            else:
                state = "no new process" if not fresh else "probe %s not answering" % restart.probe.url
            raise RestartTimeout("%s did not come back within %.0f s after %s changed: %s"
                                 % (restart.name, timeout, restart.manifest, state), path=restart.manifest)
        sleep(poll)


def apply_restarts(restarts: list, *, backup_root: str, timeout: float, probe_ok=None, proc: str = "/proc", now=None) -> list:
    """Restart each stale pod in turn (annotate, wait for the new process and its probe); returns the backup copies."""
    tree = backup_tree(backup_root)
    copies = []
    for restart in restarts:
        if restart.status != RESTART:
            continue
        text, _container = load_manifest(restart.manifest)
        copy = tree.copy_of(restart.manifest)
        if not os.path.exists(copy):
            write_backup([(copy, text.encode("utf-8"), PRIVATE_FILE_MODE)])
        copies.append(copy)
        moment = now or datetime.datetime.now(datetime.timezone.utc)
        since = time.time()
        atomic_write(restart.manifest, annotate(text, moment.strftime("%Y-%m-%dT%H:%M:%SZ"), restart.manifest).encode("utf-8"),
                     mode=file_mode(restart.manifest) or PRIVATE_FILE_MODE)
        wait_restarted(restart, since=since, timeout=timeout, probe_ok=probe_ok, proc=proc)
    return copies


def restart_report(restarts: list) -> dict:
    pods = [{"name": r.name, "manifest": r.manifest, "status": r.status, "reason": r.reason, "old_pids": r.old_pids,
             "new_pid": r.new_pid, "waited_seconds": r.waited_seconds, "probe": r.probe.url if r.probe else None}
            for r in restarts]
    return {"pods": pods, "restarted": [r.name for r in restarts if r.status == RESTART]}


def restart_diff(restarts: list) -> dict:
    return summary_diff("static pods", (Change(r.manifest, "running since before its files changed",
                                               "%s set: the kubelet restarts %s" % (ANNOTATION, r.name))
                                        for r in restarts if r.status == RESTART))
