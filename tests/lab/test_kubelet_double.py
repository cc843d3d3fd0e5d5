# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests of the kubelet lab double's static-pod handling (tests/lab/double/kubelet_double.py), CI-fast.

No apiserver and no network namespace: the double's kubeconfig points at a closed port on 127.0.0.1, so its
heartbeats fail (and must only be recorded). Pods are host processes (sleep, sh); every verdict is read from
pods.json and /proc after a bounded poll. The double runs under Debian's /usr/bin/python3.
"""

import base64
import json
import os
import signal
import socket
import subprocess
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DOUBLE = os.path.join(HERE, "double", "kubelet_double.py")
PYTHON = "/usr/bin/python3"
WAIT = 10.0


@pytest.fixture(name="kubeconfig", scope="module")
def kubeconfig_fixture(tmp_path_factory):
    """A kubelet.conf with embedded (self-signed) CA and client credential, for an apiserver that is not there."""
    result = subprocess.run([PYTHON, "-c", "import yaml"], check=False, capture_output=True, timeout=60)
    assert result.returncode == 0, "needs Debian's /usr/bin/python3 with python3-yaml (scripts/bootstrap.sh)"
    work = tmp_path_factory.mktemp("kubeconfig")
    result = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                             "-subj", "/O=system:nodes/CN=system:node:lab-node", "-keyout", "key.pem", "-out", "cert.pem"],
                            check=False, capture_output=True, text=True, cwd=work, timeout=60)
    assert result.returncode == 0, "openssl (Debian package openssl): %s" % result.stderr
    with socket.socket() as sock:  # a port nobody listens on: bound, then released
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = {name: base64.b64encode((work / name).read_bytes()).decode() for name in ("cert.pem", "key.pem")}
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "lab",
              "clusters": [{"name": "kubernetes", "cluster": {"server": "https://127.0.0.1:%d" % port, "certificate-authority-data": data["cert.pem"]}}],
              "contexts": [{"name": "lab", "context": {"cluster": "kubernetes", "user": "node"}}],
              "users": [{"name": "node", "user": {"client-certificate-data": data["cert.pem"], "client-key-data": data["key.pem"]}}]}
    path = work / "kubelet.conf"
    path.write_text(json.dumps(config))  # JSON is YAML
    return str(path)


def alive(pid):
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def start_time(pid):
    """Field 22 of /proc/PID/stat: tells a process from a later one that reuses its pid."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return [part.decode() for part in handle.read().split(b"\0")[:-1]]
    except OSError:
        return None


def pod_manifest(name, containers):
    """containers: {container name: (command, args, env)}; JSON is YAML, as the kubelet accepts both."""
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "kube-system"},
                       "spec": {"containers": [{"name": cname, "image": "none", "command": command, "args": args or [],
                                                "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}
                                               for cname, (command, args, env) in containers.items()]}})


class KubeletDouble:
    """One run of the double on a private manifest and state directory."""

    def __init__(self, root, kubeconfig):
        self.root, self.kubeconfig = root, kubeconfig
        self.manifests, self.state_dir, self.bin_dir = root / "manifests", root / "state", root / "bin"
        for directory in (self.manifests, self.state_dir, self.bin_dir):
            directory.mkdir()
        self.stderr_path = root / "double.stderr"
        self.proc = None
        self.seen = {}  # pid -> start time of every container process reported, for the teardown

    def start(self, stop_grace=2):
        argv = [PYTHON, DOUBLE, "run", "--manifests", str(self.manifests), "--kubeconfig", self.kubeconfig,
                "--node-name", "lab-node", "--node-ip", "127.0.0.1", "--state-dir", str(self.state_dir), "--bin-dir", str(self.bin_dir),
                "--file-check-period", "0.5", "--heartbeat-period", "60", "--stop-grace", str(stop_grace)]
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)  # pylint: disable=consider-using-with

    def write(self, file_name, text):
        tmp = self.manifests / (".tmp-" + file_name)  # a dotfile, ignored until renamed: no half-written manifest is read
        tmp.write_text(text)
        os.replace(tmp, self.manifests / file_name)

    def state(self):
        try:
            state = json.loads((self.state_dir / "pods.json").read_text())
        except (OSError, ValueError):
            return None
        for pod in state["pods"].values():
            for container in pod["containers"].values():
                if container["pid"] and container["pid"] not in self.seen:
                    self.seen[container["pid"]] = start_time(container["pid"])
        return state

    def wait_for(self, what, predicate):
        """Poll the state until predicate(state) is truthy (its value is returned); bounded by WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the double exited (%s): %s" % (self.proc.returncode, self.stderr_path.read_text())
            state = self.state()
            value = predicate(state) if state is not None else None
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError("timed out waiting for %s; state %s; log:\n%s" % (what, self.state(), self.stderr_path.read_text()))

    def running_pid(self, pod, container="main", other_than=None):
        def pid(state):
            found = state["pods"].get(pod, {}).get("containers", {}).get(container, {}).get("pid")
            return found if found and found != other_than and alive(found) else None
        return self.wait_for("%s/%s running" % (pod, container), pid)

    def cleanup(self):
        """Stop the double as a service manager would (SIGTERM, then SIGKILL), then kill any process group it left."""
        self.state()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=WAIT)
        for pid, started in self.seen.items():
            if started is not None and start_time(pid) == started:  # still that process, not a reused pid
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture(name="kubelet")
def kubelet_fixture(tmp_path, kubeconfig):
    double = KubeletDouble(tmp_path, kubeconfig)
    try:
        yield double
    finally:
        double.cleanup()


def wait_gone(pid):
    deadline = time.monotonic() + WAIT
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_starts_pod_with_argv_env_and_log(kubelet):
    out = kubelet.root / "foo.out"
    kubelet.write("etcd.yaml", pod_manifest("etcd", {"main": (["sh", "-c"], ['echo "$FOO" > %s; echo to-the-log; exec sleep 300' % out], {"FOO": "bar"})}))
    kubelet.start()
    pid = kubelet.running_pid("etcd")
    state = kubelet.state()
    argv = state["pods"]["etcd"]["containers"]["main"]["argv"]
    assert os.path.basename(argv[0]) == "sh" and os.path.isabs(argv[0]) and argv[1:3] == ["-c", 'echo "$FOO" > %s; echo to-the-log; exec sleep 300' % out]
    assert state["pods"]["etcd"]["manifest"] == str(kubelet.manifests / "etcd.yaml") and len(state["pods"]["etcd"]["hash"]) == 64
    assert kubelet.wait_for("env written", lambda _: out.exists() and out.read_text() == "bar\n")
    assert kubelet.wait_for("log written", lambda _: "to-the-log" in (kubelet.state_dir / "logs" / "etcd_main.log").read_text())
    assert os.getpgid(pid) == pid, "a container is started in its own session"


def test_argv0_from_bin_dir(kubelet):
    binary = kubelet.bin_dir / "kube-apiserver"
    binary.write_text("#!/bin/sh\nexec sleep 300\n")
    binary.chmod(0o755)
    command = ["/usr/local/bin/kube-apiserver", "--secure-port=6443"]  # looked up by basename in --bin-dir
    kubelet.write("kube-apiserver.yaml", pod_manifest("kube-apiserver", {"kube-apiserver": (command, None, None)}))
    kubelet.start()
    kubelet.running_pid("kube-apiserver", "kube-apiserver")
    assert kubelet.state()["pods"]["kube-apiserver"]["containers"]["kube-apiserver"]["argv"] == [str(binary), "--secure-port=6443"]


def test_changed_manifest_replaces_process(kubelet):
    kubelet.write("etcd.yaml", pod_manifest("etcd", {"main": (["sleep"], ["300"], None)}))
    kubelet.start()
    old = kubelet.running_pid("etcd")
    assert cmdline(old)[1:] == ["300"]
    old_hash = kubelet.state()["pods"]["etcd"]["hash"]
    kubelet.write("etcd.yaml", pod_manifest("etcd", {"main": (["sleep"], ["301"], None)}))
    new = kubelet.running_pid("etcd", other_than=old)
    assert cmdline(new)[1:] == ["301"] and kubelet.state()["pods"]["etcd"]["hash"] != old_hash
    assert wait_gone(old), "the old process is stopped"


def test_removed_manifest_stops_pod(kubelet):
    kubelet.write("etcd.yaml", pod_manifest("etcd", {"main": (["sleep"], ["300"], None)}))
    kubelet.start()
    pid = kubelet.running_pid("etcd")
    os.remove(kubelet.manifests / "etcd.yaml")
    kubelet.wait_for("etcd gone from pods.json", lambda state: "etcd" not in state["pods"])
    assert wait_gone(pid)


def test_unparsable_manifest_counts_as_absent(kubelet):
    kubelet.write("etcd.yaml", pod_manifest("etcd", {"main": (["sleep"], ["300"], None)}))
    kubelet.start()
    pid = kubelet.running_pid("etcd")
    kubelet.write("etcd.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: etcd\n")
    kubelet.wait_for("etcd gone from pods.json", lambda state: "etcd" not in state["pods"])
    assert wait_gone(pid)
    assert kubelet.proc.poll() is None and "ignoring %s" % (kubelet.manifests / "etcd.yaml") in kubelet.stderr_path.read_text()


def test_dotfiles_ignored(kubelet):
    kubelet.write(".hidden.yaml", pod_manifest("hidden", {"main": (["sleep"], ["300"], None)}))
    kubelet.start()
    kubelet.write("later.yaml", pod_manifest("later", {"main": (["sleep"], ["300"], None)}))
    kubelet.running_pid("later")  # the check that found later.yaml also read .hidden.yaml, which was there first
    assert set(kubelet.state()["pods"]) == {"later"}


def test_exited_process_restarted_with_backoff(kubelet):
    runs = kubelet.root / "runs"
    kubelet.write("flaky.yaml", pod_manifest("flaky", {"main": (["sh", "-c", "echo run >> %s; exit 3" % runs], None, None)}))
    kubelet.start()
    started = time.monotonic()
    kubelet.wait_for("two restarts", lambda state: state["pods"].get("flaky", {"containers": {}})["containers"].get("main", {}).get("restarts", 0) >= 2)
    assert time.monotonic() - started >= 2.5, "back-off 1 s then 2 s between the restarts"
    assert runs.read_text().count("run") >= 3
    assert "stopped (reason: exited code 3" in kubelet.stderr_path.read_text()


def test_sigterm_stops_all_pods_and_grace_ends_in_sigkill(kubelet):
    kubelet.write("a.yaml", pod_manifest("a", {"main": (["sleep"], ["300"], None), "side": (["sleep"], ["302"], None)}))
    kubelet.write("b.yaml", pod_manifest("b", {"main": (["sh", "-c", "trap '' TERM; sleep 303"], None, None)}))  # ignores SIGTERM
    kubelet.start(stop_grace=1)
    pids = [kubelet.running_pid("a"), kubelet.running_pid("a", "side"), kubelet.running_pid("b")]
    kubelet.proc.send_signal(signal.SIGTERM)
    assert kubelet.proc.wait(timeout=WAIT) == 0
    assert all(wait_gone(pid) for pid in pids)
    state = kubelet.state()
    assert [c["pid"] for pod in state["pods"].values() for c in pod["containers"].values()] == [None, None, None]


def test_heartbeat_failure_recorded_not_fatal(kubelet):
    kubelet.start()
    status = kubelet.wait_for("a failed heartbeat", lambda state: state["node_status"]["heartbeats_failed"] >= 1 and state["node_status"])
    assert status["registered"] is False and status["heartbeats_ok"] == 0 and status["last_heartbeat_ok"] is None
    assert "refused" in status["last_heartbeat_error"].lower(), status
    creds = kubelet.state_dir / "credentials"
    assert creds.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in creds.iterdir()) == ["ca.crt", "client.crt", "client.key"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in creds.iterdir())
    assert "heartbeat failed" in kubelet.stderr_path.read_text() and "PRIVATE KEY" not in kubelet.stderr_path.read_text()
    kubelet.write("late.yaml", pod_manifest("late", {"main": (["sleep"], ["300"], None)}))
    kubelet.running_pid("late")  # the pod loop goes on
