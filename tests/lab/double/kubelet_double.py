# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubelet test double for the kubepki.certs kubeadm lab (no container runtime: static pods run as host processes).

Written independently of the collection's code (stdlib + PyYAML, Debian's /usr/bin/python3). Follows the
kubelet's static-pod file source (pkg/kubelet/config/file.go: every file of the manifest directory not starting
with "." is one v1 Pod, re-read every fileCheckFrequency, 20 s; an unreadable or unparsable file counts as absent)
and its node status loop: register the Node (POST, 409 AlreadyExists = registered), renew the node Lease in
kube-node-lease and patch the Ready condition, through the real kube-apiserver with the kubelet.conf credential
(re-read before every heartbeat, so a renewed client certificate is picked up).

Deviations from the kubelet:
  * a container is a process group started from ``command + args`` (argv[0] looked up in --bin-dir first, then PATH);
    only ``env`` entries with a plain ``value`` are passed, ``$(VAR)`` is not expanded, no image, no probes, no cgroups;
  * a pod is keyed by ``metadata.name`` (the kubelet's mirror pod is ``<name>-<node>``) and its identity is the sha256
    of the manifest file's bytes (the kubelet hashes the decoded pod and the file path);
  * restart back-off is 1 s doubling to 10 s (the kubelet: 10 s doubling to 5 min), so lab tests stay quick;
  * no inotify: only the periodic check; no pod status is posted (no mirror pods), only the Node and its Lease.
State: ``<state-dir>/pods.json`` (``status --state-dir DIR`` prints it), logs ``<state-dir>/logs/<pod>_<container>.log``.
"""

import argparse
import base64
import datetime
import hashlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

import yaml

HTTP_TIMEOUT = 5.0
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 10.0
BACKOFF_RESET_AFTER = 2 * BACKOFF_MAX  # like the kubelet: a container that ran this long starts its back-off afresh
ERROR_LOG_THROTTLE = 30.0
LEASE_DURATION = 40
KUBELET_VERSION = "v0.0.0-double"
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def log(msg):
    sys.stderr.write("%s kubelet-double: %s\n" % (datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3], msg))
    sys.stderr.flush()


def write_private(path, data, mode=0o600):
    """Write a file atomically with the given mode (credentials, state)."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# ---------------------------------------------------------------- static pods

class Container:
    """One container of a static pod: a host process group, restarted with back-off when it exits."""

    def __init__(self, pod, spec, bin_dir, log_dir):
        self.pod, self.name = pod, str(spec["name"])
        self.command, self.bin_dir = [str(a) for a in (spec.get("command") or []) + (spec.get("args") or [])], bin_dir
        self.argv = resolve_argv(self.command, bin_dir)
        self.env = dict(os.environ)
        self.env.update({str(e["name"]): str(e["value"]) for e in spec.get("env") or [] if isinstance(e, dict) and "name" in e and "value" in e})
        self.log_path = os.path.join(log_dir, "%s_%s.log" % (pod, self.name))
        self.proc, self.started_at, self.restarts = None, None, 0
        self.backoff, self.next_start = BACKOFF_FIRST, 0.0

    def start(self):
        self.started_at, self.argv = time.time(), resolve_argv(self.command, self.bin_dir)  # a binary installed meanwhile is found
        if not self.argv:
            log("pod %s container %s: no command (there is no image to take an entrypoint from)" % (self.pod, self.name))
            self._schedule_restart(self.started_at)
            return
        try:
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                                             env=self.env, start_new_session=True)
        except OSError as err:
            log("pod %s container %s: cannot start %s: %s" % (self.pod, self.name, self.argv[0], err))
            self._schedule_restart(self.started_at)
            return
        log("pod %s container %s started (pid %d): %s" % (self.pod, self.name, self.proc.pid, " ".join(self.argv)))

    def _schedule_restart(self, now):
        if self.started_at is not None and now - self.started_at >= BACKOFF_RESET_AFTER:
            self.backoff = BACKOFF_FIRST
        self.next_start = now + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def tend(self, now):
        """restartPolicy Always: notice an exit, restart when the back-off has passed."""
        if self.proc is None and now >= self.next_start:
            self.restarts += 1
            self.start()
        elif self.proc is not None and self.proc.poll() is not None:
            log("pod %s container %s stopped (reason: exited code %d, pid %d)" % (self.pod, self.name, self.proc.returncode, self.proc.pid))
            kill_group(self.proc.pid, signal.SIGKILL)  # whatever it left behind in its group, as the kubelet's cgroup kill
            self.proc = None
            self._schedule_restart(now)

    def finish_stop(self, deadline, reason):
        """After the SIGTERM: wait until the deadline, then SIGKILL the group."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            kill_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        kill_group(self.proc.pid, signal.SIGKILL)
        log("pod %s container %s stopped (reason: %s, pid %d, code %s)" % (self.pod, self.name, reason, self.proc.pid, self.proc.returncode))
        self.proc = None

    def state(self):
        return {"pid": self.proc.pid if self.proc else None, "started_at": self.started_at, "restarts": self.restarts, "argv": self.argv}


def kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def resolve_argv(argv, bin_dir):
    """argv[0] from --bin-dir when a file of that basename is there (the lab's real binaries), else from PATH."""
    if not argv:
        return argv
    local = os.path.join(bin_dir, os.path.basename(argv[0])) if bin_dir else None
    if local and os.path.isfile(local):
        return [local] + argv[1:]
    if "/" not in argv[0]:
        return [shutil.which(argv[0]) or argv[0]] + argv[1:]
    return argv


class Pod:
    def __init__(self, name, manifest, digest, spec, bin_dir, log_dir):
        self.name, self.manifest, self.hash = name, manifest, digest
        grace = spec.get("terminationGracePeriodSeconds")
        self.grace = float(grace) if isinstance(grace, (int, float)) and grace >= 0 else None  # None: the kubelet's default
        self.containers = [Container(name, c, bin_dir, log_dir) for c in spec["containers"]]

    def state(self):
        return {"manifest": self.manifest, "hash": self.hash, "containers": {c.name: c.state() for c in self.containers}}


def stop_pods(pods_and_reasons, grace):
    """SIGTERM every process group at once, then wait for all of them up to one shared grace period: the longest
    terminationGracePeriodSeconds of those pods, ``grace`` (the kubelet's default, 30 s) where a pod sets none."""
    for pod, _reason in pods_and_reasons:
        for container in pod.containers:
            if container.proc is not None:
                kill_group(container.proc.pid, signal.SIGTERM)
    deadline = time.time() + max([grace if pod.grace is None else pod.grace for pod, _reason in pods_and_reasons] or [grace])
    for pod, reason in pods_and_reasons:
        for container in pod.containers:
            container.finish_stop(deadline, reason)


def read_manifests(directory, reported):
    """{pod name: (path, sha256, pod)} of the manifest directory; bad files are logged once per content and left out."""
    def skip(key, why):
        if key not in reported:
            reported.add(key)
            log("ignoring %s: %s" % (key[0], why))

    found = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError as err:
        skip((directory, str(err)), err)
        return found
    for path in (os.path.join(directory, name) for name in names if not name.startswith(".")):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as err:  # a directory, or gone meanwhile
            skip((path, str(err)), err)
            continue
        digest = hashlib.sha256(data).hexdigest()
        pod, problem = parse_pod(data)
        if problem is None and pod["metadata"]["name"] in found:
            problem = "pod %s is already defined by %s" % (pod["metadata"]["name"], found[pod["metadata"]["name"]][0])
        if problem is None:
            found[pod["metadata"]["name"]] = (path, digest, pod)
        else:
            skip((path, digest), problem)
    return found


def parse_pod(data):
    """(pod, None) or (None, why): one v1 Pod per file, YAML or JSON."""
    try:
        pod = yaml.safe_load(data)
    except yaml.YAMLError as err:
        return None, "not YAML/JSON: %s" % str(err).replace("\n", " ")
    if not isinstance(pod, dict) or pod.get("kind") != "Pod" or pod.get("apiVersion") != "v1":
        return None, "not a v1 Pod"
    if not isinstance(pod.get("metadata"), dict) or not pod["metadata"].get("name"):
        return None, "pod without metadata.name"
    containers = pod.get("spec").get("containers") if isinstance(pod.get("spec"), dict) else None
    if not isinstance(containers, list) or not containers:
        return None, "pod without spec.containers"
    for container in containers:  # the part of the kubelet's validation this double relies on
        if not isinstance(container, dict) or not container.get("name"):
            return None, "a container without a name"
        if not all(isinstance(container.get(key) or [], list) for key in ("command", "args", "env")):
            return None, "container %s: command, args and env must be lists" % container["name"]
    pod["metadata"]["name"] = str(pod["metadata"]["name"])
    return pod, None


# ---------------------------------------------------------------- node registration and heartbeat

def load_credential(kubeconfig, cred_dir):
    """(server URL, ssl context) from a kubeconfig; embedded cert/key go to 0600 files, as load_cert_chain needs files."""
    with open(kubeconfig, "rb") as handle:
        config = yaml.safe_load(handle)
    base = os.path.dirname(os.path.abspath(kubeconfig))

    def named(kind, name):
        for entry in config.get(kind + "s") or []:
            if entry.get("name") == name:
                return entry.get(kind) or {}
        raise ValueError("kubeconfig %s: no %s named %r" % (kubeconfig, kind, name))

    context = named("context", config.get("current-context"))
    cluster, user = named("cluster", context.get("cluster")), named("user", context.get("user"))
    os.makedirs(cred_dir, mode=0o700, exist_ok=True)
    os.chmod(cred_dir, 0o700)

    def material(entry, key, file_name):
        if entry.get(key + "-data"):
            path = os.path.join(cred_dir, file_name)
            write_private(path, base64.b64decode(entry[key + "-data"]))
            return path
        if entry.get(key):
            return os.path.join(base, entry[key])
        raise ValueError("kubeconfig %s: no %s(-data)" % (kubeconfig, key))

    ca_file = material(cluster, "certificate-authority", "ca.crt")
    cert_file, key_file = material(user, "client-certificate", "client.crt"), material(user, "client-key", "client.key")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED are its defaults
    try:
        tls.load_verify_locations(cafile=ca_file)
        tls.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as err:  # name the files, never their content
        raise ValueError("cannot load the CA %s or client certificate %s / key %s: %s" % (ca_file, cert_file, key_file, err)) from err
    return cluster.get("server"), tls


class ApiError(Exception):
    """An apiserver answer other than the expected one."""


class ApiClient:
    def __init__(self, server, tls):
        url = urllib.parse.urlsplit(server or "")
        if url.scheme != "https" or not url.hostname:
            raise ApiError("kubeconfig server %r is not an https URL" % server)
        self.conn = http.client.HTTPSConnection(url.hostname, url.port or 443, context=tls, timeout=HTTP_TIMEOUT)

    def call(self, method, path, body=None, content_type="application/json", ok=(200, 201)):
        """(status, decoded body); ApiError with the code and the apiserver's message unless the status is in ok."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "User-Agent": "kubelet-double/" + KUBELET_VERSION}
        if payload is not None:
            headers["Content-Type"] = content_type
        self.conn.request(method, path, body=payload, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = {"message": raw.decode("utf-8", "replace")[:300]}
        if response.status not in ok:
            message = decoded.get("message", "") if isinstance(decoded, dict) else ""
            raise ApiError("%s %s: HTTP %d: %s" % (method, path, response.status, message))
        return response.status, decoded

    def close(self):
        self.conn.close()


def rfc3339(when, micro=False):
    stamp = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


class NodeAgent:
    """Registers the Node and keeps its Lease and Ready condition fresh, like the kubelet's node status loop."""

    def __init__(self, args):
        self.args = args
        self.cred_dir = os.path.join(args.state_dir, "credentials")
        self.lock = threading.Lock()
        self.status = {"registered": False, "last_heartbeat_ok": None, "last_heartbeat_error": None, "heartbeats_ok": 0, "heartbeats_failed": 0}
        self.ready_since = None
        self.error_logged = {}

    def snapshot(self):
        with self.lock:
            return dict(self.status)

    def run(self, stop):
        while not stop.is_set():
            self.beat()
            stop.wait(self.args.heartbeat_period)

    def beat(self):
        client = None
        try:
            server, tls = load_credential(self.args.kubeconfig, self.cred_dir)  # re-read every time: renewals are picked up
            client = ApiClient(server, tls)
            if not self.snapshot()["registered"]:
                self.register(client)
            self.renew_lease(client)
            self.post_ready(client)
        except Exception as err:  # pylint: disable=broad-exception-caught  # the loop must outlive any apiserver/TLS error
            self.failed("%s: %s" % (type(err).__name__, err))
            return
        finally:
            if client is not None:
                client.close()
        with self.lock:
            self.status.update(last_heartbeat_ok=time.time(), last_heartbeat_error=None, heartbeats_ok=self.status["heartbeats_ok"] + 1)

    def failed(self, text):
        with self.lock:
            self.status.update(last_heartbeat_error=text, heartbeats_failed=self.status["heartbeats_failed"] + 1)
        now = time.time()
        if now - self.error_logged.get(text, 0.0) >= ERROR_LOG_THROTTLE:
            self.error_logged[text] = now
            log("heartbeat failed: %s" % text)

    def register(self, client):
        name = self.args.node_name
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}}
        status, _body = client.call("POST", "/api/v1/nodes", node, ok=(200, 201, 409))
        with self.lock:
            self.status["registered"] = True
        log("node %s registered%s" % (name, " (already existed)" if status == 409 else ""))

    def renew_lease(self, client):
        name = self.args.node_name
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION, "renewTime": rfc3339(time.time(), micro=True)}
        status, lease = client.call("GET", "%s/%s" % (LEASE_PATH, name), ok=(200, 404))
        if status == 404:
            client.call("POST", LEASE_PATH, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                             "metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": spec})
            return
        lease.setdefault("spec", {}).update(spec)  # keeps metadata.resourceVersion: an optimistic-concurrency update
        client.call("PUT", "%s/%s" % (LEASE_PATH, name), lease)

    def post_ready(self, client):
        now = time.time()
        self.ready_since = self.ready_since or now
        patch = {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet double is posting ready status",
                            "lastHeartbeatTime": rfc3339(now), "lastTransitionTime": rfc3339(self.ready_since)}],
            "addresses": [{"type": "InternalIP", "address": self.args.node_ip}, {"type": "Hostname", "address": self.args.node_name}],
            "nodeInfo": {"kubeletVersion": KUBELET_VERSION}}}
        client.call("PATCH", "/api/v1/nodes/%s/status" % self.args.node_name, patch, content_type="application/strategic-merge-patch+json")


# ---------------------------------------------------------------- main loop

class Kubelet:
    def __init__(self, args):
        self.args = args
        self.pods = {}
        self.reported = set()  # (file, content hash or error) already logged as ignored
        self.log_dir = os.path.join(args.state_dir, "logs")
        self.state_path = os.path.join(args.state_dir, "pods.json")
        self.node = NodeAgent(args)

    def sync_manifests(self):
        """Start new pods, replace changed ones, stop those whose manifest is gone or no longer parses."""
        wanted = read_manifests(self.args.manifests, self.reported)
        to_stop, to_start = [], []
        for name, pod in list(self.pods.items()):
            if name not in wanted:
                to_stop.append((self.pods.pop(name), "manifest unusable" if os.path.exists(pod.manifest) else "removed"))
            elif wanted[name][1] != pod.hash:
                to_stop.append((self.pods.pop(name), "changed"))
            else:
                pod.manifest = wanted[name][0]
        stop_pods(to_stop, self.args.stop_grace)
        for name, (path, digest, spec) in wanted.items():
            if name not in self.pods:
                self.pods[name] = Pod(name, path, digest, spec["spec"], self.args.bin_dir, self.log_dir)
                to_start.append(self.pods[name])
        for container in (container for pod in to_start for container in pod.containers):
            container.start()

    def tend_containers(self):
        now = time.time()
        for pod in self.pods.values():
            for container in pod.containers:
                container.tend(now)

    def write_state(self):
        state = {"node": self.args.node_name, "pods": {name: pod.state() for name, pod in self.pods.items()}, "node_status": self.node.snapshot()}
        write_private(self.state_path, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode(), mode=0o644)

    def run(self):
        os.makedirs(self.log_dir, exist_ok=True)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        threading.Thread(target=self.node.run, args=(stop,), name="node-status", daemon=True).start()
        tick = max(0.05, min(0.25, self.args.file_check_period / 2))
        next_check = 0.0
        log("started: node %s, manifests %s" % (self.args.node_name, self.args.manifests))
        while not stop.is_set():
            if time.time() >= next_check:
                self.sync_manifests()
                next_check = time.time() + self.args.file_check_period
            self.tend_containers()
            self.write_state()
            stop.wait(tick)
        log("terminating: stopping all pods")
        stop_pods([(pod, "kubelet shutdown") for pod in self.pods.values()], self.args.stop_grace)
        self.write_state()
        return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="kubelet_double.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the static pods of a manifest directory and keep the Node ready")
    for option in ("--manifests", "--kubeconfig", "--node-name", "--node-ip", "--state-dir"):
        run.add_argument(option, required=True)
    run.add_argument("--bin-dir")
    run.add_argument("--file-check-period", type=float, default=20.0)  # the kubelet's fileCheckFrequency
    run.add_argument("--heartbeat-period", type=float, default=10.0)  # its nodeStatusUpdateFrequency
    # The kubelet's default terminationGracePeriodSeconds: kube-apiserver's graceful shutdown (draining in-flight
    # requests) takes more than 10 s; cutting it short with SIGKILL breaks requests no real kubelet would break.
    run.add_argument("--stop-grace", type=float, default=30.0)
    commands.add_parser("status", help="print <state-dir>/pods.json").add_argument("--state-dir", required=True)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "status":
        try:
            with open(os.path.join(args.state_dir, "pods.json"), encoding="utf-8") as handle:
                sys.stdout.write(handle.read())
        except OSError as err:
            sys.stderr.write("kubelet-double: no state: %s\n" % err)
            return 1
        return 0
    os.makedirs(args.state_dir, exist_ok=True)
    return Kubelet(args).run()


if __name__ == "__main__":
    sys.exit(main())
