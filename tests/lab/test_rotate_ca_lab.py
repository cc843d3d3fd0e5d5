# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""rotate-ca.yml and rotate-service-key.yml on the lab, end to end: the "done when" list of the rotation issue.

The real top-level playbooks run with ``ansible-playbook`` from the repository root (its ansible.cfg applies)
against lab hosts (network namespaces + sshd, tests/lab/kubepki_lab.py) running the k3s/RKE2 double with real etcd.
Verdicts come from tools that share no code with the collection: ``openssl verify -x509_strict``, the double's
``lab-hash-ca`` and kubectl, the traffic probe (tests/lab/probe.py), file hashes and the services' PIDs. Nothing
under plugins/ is imported here.

Scenarios (one lab each, shared by the tests of its class, torn down at the end of the class so that only one
cluster runs at a time on the 2-core CI machine; tests of a class run in order and build on each other: marked
``scenario``, see conftest.py, so that after a failure the later steps are errors naming it). The steps
are functions of the lab (its program picks unit names, paths and kubectl), shared by the k3s and RKE2 classes:

A ``TestK3sCrossSign``   k3s 3 servers + 2 agents, default CAs: check mode, a service-account token, cross_sign under
                         the probe, tokens, leaves, rerun, service-key rotation, rotate-certs (leaf_rotation), a
                         failing health gate on server2.
B ``TestRke2CrossSign``  RKE2 3 + 2 (-e kubepki_distribution=rke2): the same steps, and rollback.yml between the
                         service-key rotation and the failing gate (last: it leaves the cluster half-rotated), then a
                         rotation and its rollback with ca_rotation_backup_dir overridden (and a refused rollback
                         without it).
C ``TestK3sCustomCA``    k3s 3 + 1 on a custom root + intermediate (kubepki.certs.ca_chain before the first start):
                         D first (a new_root set is refused before any node is touched), then a renew that keeps
                         the token and the intermediate and root.
  ``TestRke2CustomCA``   the same on RKE2 3 + 1 (ca_chain distribution=rke2 in /var/lib/rancher/rke2/server/tls).

Needs root, openssh-server, etcd-server, openssl and util-linux (nsenter); a missing one fails the test naming
the Debian package (shared fixtures in conftest.py). ANSIBLE_COLLECTIONS_PATH: used when it holds ansible_collections/kubepki/certs (CI: the
staged collection), else a symlink tree to this checkout is made for the run (as scripts/demo.sh does).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import ansible_runner
import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PROBE = os.path.join(HERE, "probe.py")
BOOTSTRAP = os.path.join(HERE, "playbooks", "bootstrap_cluster.yml")
ROTATE_CA = "rotate-ca.yml"
ROTATE_SERVICE_KEY = "rotate-service-key.yml"
PLAYBOOK_TIMEOUT = 600
CMD_TIMEOUT = 60
# Tool -> Debian package.
TOOLS = {"openssl": "openssl", "nsenter": "util-linux", "etcd": "etcd-server", "etcdctl": "etcd-client",
         "ssh": "openssh-client", "/usr/sbin/sshd": "openssh-server"}
# The CA bundles of a k3s/RKE2 server (relative to server/tls), as named by the layout of upstream's rotate-ca.
CA_FILES = {"server-ca": "server-ca.crt", "client-ca": "client-ca.crt", "request-header-ca": "request-header-ca.crt",
            "etcd/server-ca": "etcd/server-ca.crt", "etcd/peer-ca": "etcd/peer-ca.crt"}
# Files the running services rewrite on their own, excluded from "no file changed": not a change made by a playbook.
# - etcd's member dir (WAL, snapshots): every /readyz makes the double ask etcd's /health, which etcd 3.4 answers
#   with a quorum read proposed through raft, i.e. appended to the WAL (seen in the check-mode run, whose preflight
#   asks each server's /readyz as any read-only health check would);
# - the services' logs and the agents' load-balancer server list (the double appends/refreshes them by itself, e.g.
#   on a late heartbeat; not seen in an idle minute, excluded so CPU load cannot make the test flaky);
# - the lab's sshd logs.
SELF_REWRITTEN = (
    re.compile(r"^/var/lib/rancher/[^/]+/server/db/etcd/member/"),
    re.compile(r"^/var/lib/rancher/[^/]+/lab/[^/]+\.log$"),
    re.compile(r"^/var/lib/rancher/[^/]+/agent/etc/[^/]+-load-balancer\.json$"),
    re.compile(r"^/var/log/kubepki-lab/"),
)
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def _tool(name):
    path = name if os.path.isabs(name) else shutil.which(name)
    assert path and os.access(path, os.X_OK), "needs %s (Debian package %s; scripts/bootstrap.sh installs it)" % (name, TOOLS[name])
    return path


def _ansible_bin(name):
    found = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
    assert os.access(found, os.X_OK), "needs %s: ansible-core in the venv (scripts/bootstrap.sh)" % name
    return found


def run(cmd, timeout=CMD_TIMEOUT, check=True, **kwargs):
    try:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        pytest.fail("timed out after %ss: %s" % (timeout, " ".join(cmd)), pytrace=False)
    if check:
        assert result.returncode == 0, "%s -> rc %d\n%s\n%s" % (" ".join(cmd), result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    return result


def sha256_file(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def read_text(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def certs_in(data):
    return x509.load_pem_x509_certificates(data if isinstance(data, bytes) else data.encode())


def pem(cert):
    return cert.public_bytes(Encoding.PEM).decode()


def is_ca(cert):
    try:
        return cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca
    except x509.ExtensionNotFound:
        return False


def issued_by(cert, issuer):
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def self_signed(cert):
    return cert.issuer == cert.subject and issued_by(cert, cert)


def key_id(cert, oid):
    try:
        ext = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    return ext.key_identifier if oid == ExtensionOID.AUTHORITY_KEY_IDENTIFIER else ext.digest


def jwt_header(token):
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


class Lab:
    """One running lab + cluster: paths into the hosts' private roots, commands inside a host, playbook runs."""

    def __init__(self, state, program, collections, log_dir, harness):
        self.harness = harness  # tests/lab/kubepki_lab.py (conftest's lab_harness)
        self.state = state
        self.base = state["base"]
        self.program = program
        self.collections = collections
        self.log_dir = log_dir
        self.hosts = [h["name"] for h in state["hosts"]]
        self.servers = [h["name"] for h in state["hosts"] if h["group"] == "servers"]
        self.agents = [h["name"] for h in state["hosts"] if h["group"] == "agents"]
        self._host = {h["name"]: h for h in state["hosts"]}
        self.ctx = {}  # what earlier tests of the scenario recorded for later ones
        self.runs = 0
        # "ansible-runner": every playbook run as an AWX job template runs it (see runner_job)
        self.executor = "ansible-playbook"
        self.events_scanned = 0

    # --- layout (independent of the collection: upstream's documented paths) ---
    @property
    def rancher(self):
        return "/var/lib/rancher/%s" % self.program

    @property
    def etc(self):
        return "/etc/rancher/%s" % self.program

    def unit(self, host):
        if self.program == "rke2":
            return "rke2-server" if host in self.servers else "rke2-agent"
        return "k3s" if host in self.servers else "k3s-agent"

    def kubectl(self):
        if self.program == "rke2":  # RKE2 stages kubectl into <data-dir>/bin; no `rke2 kubectl`
            return ["/var/lib/rancher/rke2/bin/kubectl", "--kubeconfig", "/etc/rancher/rke2/rke2.yaml"]
        return ["k3s", "kubectl"]

    def path(self, host, path):
        """A path inside ``host`` as seen from here (the private dirs are bind mounts of <root>/root/...)."""
        return os.path.join(self._host[host]["root"], "root") + path

    def address(self, host):
        return self._host[host]["address"]

    # --- inside a host ---
    def sshd_pid(self, host):
        return self._host[host]["pid"]

    def exec(self, host, argv, stdin=None, timeout=CMD_TIMEOUT, check=True):
        """Run ``argv`` inside ``host`` (its mount, UTS and network namespaces, entered through its sshd)."""
        return run([_tool("nsenter"), "-t", str(self.sshd_pid(host)), "-m", "-u", "-n", "--"] + list(argv),
                   timeout=timeout, check=check, input=stdin)

    def service_pid(self, host):
        """PID of the host's k3s/RKE2 service (the double's pid file), checked to be alive inside that host."""
        pid_file = self.path(host, "%s/lab/%s.pid" % (self.rancher, self.unit(host)))
        pid = int(read_text(pid_file).strip())
        assert os.path.exists("/proc/%d" % pid), "%s: %s names pid %d, which is not running" % (host, pid_file, pid)
        host_ns = os.readlink("/proc/%d/ns/mnt" % self.sshd_pid(host))
        assert os.readlink("/proc/%d/ns/mnt" % pid) == host_ns, "%s: pid %d does not run inside the host" % (host, pid)
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        assert self.program in cmdline, "%s: pid %d is not the %s service: %s" % (host, pid, self.program, cmdline)
        return pid

    def service_pids(self):
        return {host: self.service_pid(host) for host in self.hosts}

    def file_hashes(self, prefixes=("/",)):
        """sha256 of every file under the host's private dirs (or the given prefixes of them), per host."""
        hashes = {}
        for host in self.hosts:
            root = os.path.join(self._host[host]["root"], "root")
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in filenames:
                    full = os.path.join(dirpath, name)
                    rel = full[len(root):]
                    if not any(rel.startswith(p) for p in prefixes) or any(p.search(rel) for p in SELF_REWRITTEN):
                        continue
                    if os.path.islink(full):
                        hashes["%s:%s" % (host, rel)] = "link:" + os.readlink(full)
                    elif os.path.isfile(full):
                        hashes["%s:%s" % (host, rel)] = sha256_file(full)
        return hashes

    def datastore_hash(self):
        # nodes/*.json are the nodes' heartbeat records (rewritten every few seconds); bootstrap.json holds the
        # cluster's CAs and keys (what rotate-ca writes).
        return sha256_file(os.path.join(self.base, "datastore", "bootstrap.json"))

    # --- Ansible ---
    def playbook(self, playbook, *args, timeout=PLAYBOOK_TIMEOUT):
        """ansible-playbook from the repository root; returns (rc, output). The output is kept in the lab's log dir.
        With executor "ansible-runner" the run is an AWX-like job instead (runner_job)."""
        if self.executor == "ansible-runner":
            return self.runner_job(playbook, args, timeout)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=self.collections, ANSIBLE_HOST_KEY_CHECKING="False",
                   ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_DEPRECATION_WARNINGS="False",
                   ANSIBLE_RETRY_FILES_ENABLED="False", ANSIBLE_STDOUT_CALLBACK="default")
        env.pop("ANSIBLE_CONFIG", None)  # the repository's ansible.cfg (cwd) applies
        extra = ["-e", "kubepki_distribution=%s" % self.program] if self.program != "k3s" else []
        cmd = [_ansible_bin("ansible-playbook"), "-i", self.state["inventory"], playbook] + extra + list(args)
        started = time.monotonic()
        result = run(cmd, timeout=timeout, check=False, cwd=REPO, env=env)
        output = result.stdout + result.stderr
        self.runs += 1
        log = os.path.join(self.log_dir, "%02d-%s.log" % (self.runs, os.path.basename(playbook)))
        with open(log, "w", encoding="utf-8") as handle:
            handle.write("$ %s\n(rc %d, %.1f s)\n%s" % (" ".join(cmd), result.returncode, time.monotonic() - started, output))
        return result.returncode, output

    def runner_job(self, playbook, args, timeout):
        """The playbook as an AWX job template runs it: ansible-runner (AWX's executor) with a private data dir of
        its own, the lab's inventory, extra variables (args' -e k=v), --check as a check job passes it, verbosity 3
        (-vvv). Every job event is scanned for the lab's join tokens and for any private key on any node, before and
        after the run (new keys included); a hit fails the test. Returns (rc, stdout of the job)."""
        extravars, cmdline, rest = {}, [], list(args)
        while rest:
            arg = rest.pop(0)
            if arg == "-e":
                name, value = rest.pop(0).split("=", 1)
                extravars[name] = value
            else:
                cmdline.append(arg)
        if self.program != "k3s":
            extravars["kubepki_distribution"] = self.program
        secrets = self.secrets()
        self.runs += 1
        private = os.path.join(self.log_dir, "%02d-%s.runner" % (self.runs, os.path.basename(playbook)))
        os.makedirs(private)
        envvars = {"ANSIBLE_COLLECTIONS_PATH": self.collections, "ANSIBLE_HOST_KEY_CHECKING": "False",
                   "ANSIBLE_NOCOLOR": "1", "ANSIBLE_DEPRECATION_WARNINGS": "False", "ANSIBLE_RETRY_FILES_ENABLED": "False"}
        job = ansible_runner.run(private_data_dir=private, ident="job", project_dir=REPO, playbook=playbook,
                                 inventory=self.state["inventory"], extravars=extravars,
                                 cmdline=" ".join(cmdline) or None, verbosity=3, envvars=envvars, quiet=True,
                                 timeout=timeout)
        events = list(job.events)
        output = job.stdout.read()
        secrets.update(self.secrets())
        text = json.dumps(events)
        leaked = sorted({name for name, value in secrets.items() if value in text})
        assert events and not leaked, "%s: job events carry %s (see %s)" % (playbook, leaked, private)
        self.events_scanned += len(events)
        return job.rc, output

    def secrets(self):
        """What must never reach a job event: the join tokens (and their password part) and, for every private key on
        any node, its PEM body lines and the start of its base64 (slurp's form). name -> fragment."""
        found = {}
        for (host, location), token in self.tokens().items():
            found["token %s:%s" % (host, location)] = token
            password = token.rsplit(":", 1)[-1]
            if len(password) >= 16:
                found["token password %s:%s" % (host, location)] = password
        for host in self.hosts:
            root = os.path.join(self._host[host]["root"], "root")
            for dirpath, _dirnames, filenames in os.walk(root):
                for file_name in filenames:
                    full = os.path.join(dirpath, file_name)
                    if os.path.islink(full) or not os.path.isfile(full) or os.path.getsize(full) > 65536:
                        continue
                    with open(full, "rb") as handle:
                        data = handle.read()
                    if b"PRIVATE KEY-----" not in data:
                        continue
                    where = "key %s:%s" % (host, full[len(root):])
                    found[where + " (base64)"] = base64.b64encode(data).decode("ascii")[:48]
                    lines = [line for line in data.decode("ascii", "replace").splitlines() if len(line) >= 32 and "-----" not in line]
                    found.update(("%s line %d" % (where, number), line) for number, line in enumerate(lines))
        found["PEM private key marker"] = "PRIVATE KEY-----"
        return found

    def adhoc(self, pattern, module, args):
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=self.collections, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1")
        env.pop("ANSIBLE_CONFIG", None)
        return run([_ansible_bin("ansible"), "-i", self.state["inventory"], pattern, "-m", module, "-a", args],
                   timeout=PLAYBOOK_TIMEOUT, cwd=REPO, env=env)

    # --- cluster facts read with the double's own tools ---
    def tls(self, host, rel=""):
        return self.path(host, "%s/server/tls/%s" % (self.rancher, rel))

    def hash_ca(self, path):
        return run(["/usr/local/bin/k3s", "lab-hash-ca", path]).stdout.strip()

    def nodes_ready(self):
        out = self.exec(self.servers[0], self.kubectl() + ["get", "nodes", "-o", "json"]).stdout
        ready = {}
        for item in json.loads(out)["items"]:
            conditions = {c["type"]: c["status"] for c in item["status"]["conditions"]}
            ready[item["metadata"]["name"]] = conditions.get("Ready")
        return ready

    def wait_all_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        ready = {}
        while time.monotonic() < deadline:
            ready = self.nodes_ready()
            if set(ready) >= set(self.hosts) and all(ready[h] == "True" for h in self.hosts):
                return ready
            time.sleep(2)
        pytest.fail("not every node Ready within %ss: %s" % (timeout, ready), pytrace=False)
        return ready

    def tokens(self):
        """Every token location of the lab nodes: (host, location) -> token text."""
        found = {}
        for host in self.hosts:
            config = yaml.safe_load(read_text(self.path(host, self.etc + "/config.yaml"))) or {}
            if "token" in config:
                found[(host, self.etc + "/config.yaml")] = str(config["token"])
            if host in self.servers:
                token_file = self.path(host, self.rancher + "/server/token")
                found[(host, self.rancher + "/server/token")] = read_text(token_file).strip()
        return found

    def token_bytes(self):
        out = {}
        for host in self.hosts:
            paths = [self.etc + "/config.yaml"] + ([self.rancher + "/server/token"] if host in self.servers else [])
            for path in paths:
                with open(self.path(host, path), "rb") as handle:
                    out[(host, path)] = handle.read()
        return out

    def ca_bundles(self, host):
        return {name: certs_in(open(self.tls(host, rel), "rb").read()) for name, rel in CA_FILES.items()}


def make_lab(tmp_root, name, subnet, servers, agents, program, collections, harness):
    base = tempfile.mkdtemp(prefix="kpr-%s-" % name[-1], dir="/tmp")
    try:
        state = harness.up(base, servers, agents, name=name, subnet=subnet, owner_pid=os.getpid(), log=lambda msg: None)
    except harness.LabError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail("lab %s/%s cannot come up: %s" % (name, subnet, exc), pytrace=False)
    log_dir = os.path.join(tmp_root, name)
    os.makedirs(log_dir, exist_ok=True)
    return Lab(state, program, collections, log_dir, harness)


def bootstrap(lab):
    rc, out = lab.playbook(BOOTSTRAP, "-e", "lab_dir=%s" % lab.base)
    assert rc == 0, "bootstrap failed (rc %d):\n%s" % (rc, out[-4000:])
    lab.wait_all_ready()


def teardown(lab):
    try:
        lab.harness.down(lab.base, log=lambda msg: None)
    finally:
        shutil.rmtree(lab.base, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# shared verdicts


def start_probe(lab, out):
    """Probe of real clients (Go TLS client with the old and the current CA, etcdctl over every etcd member) against every
    server; the CA/client files are snapshots taken now. The verdict allows one availability blip per client and
    server restart (the rotation restarts every server once)."""
    snap = os.path.join(out, "ca")
    os.makedirs(snap, exist_ok=True)
    server1 = lab.servers[0]
    for src, dst in (("server-ca.crt", "old.crt"), ("server-ca.crt", "current.crt"), ("etcd/server-ca.crt", "etcd-ca.crt"),
                     ("client-admin.crt", "client-admin.crt"), ("client-admin.key", "client-admin.key"),
                     ("etcd/client.crt", "etcd-client.crt"), ("etcd/client.key", "etcd-client.key")):
        shutil.copyfile(lab.tls(server1, src), os.path.join(snap, dst))
    # The old and current clients GET /version: it needs a client certificate under the client CA and a server
    # certificate they trust (what a CA rotation can break) and nothing else. Not /readyz: the double answers it from
    # etcd's /health, a v2 quorum read that fails for the instant of an etcd leadership transfer, which etcd does on
    # every graceful stop of its leader (seen once in four rotations, while the etcd kind's put + get through the same
    # server succeeded). Datastore availability is the etcd kind's job.
    run([sys.executable, PROBE, "start", "--out", out, "--lab-state", os.path.join(lab.base, "state.json"),
         "--lab-port", "6443", "--lab-etcd-port", "2379", "--path", "/version",
         "--old-ca", os.path.join(snap, "old.crt"), "--current-ca-file", os.path.join(snap, "current.crt"),
         "--client-cert", os.path.join(snap, "client-admin.crt"), "--client-key", os.path.join(snap, "client-admin.key"),
         "--etcd-cacert", os.path.join(snap, "etcd-ca.crt"), "--etcd-cert", os.path.join(snap, "etcd-client.crt"),
         "--etcd-key", os.path.join(snap, "etcd-client.key"), "--interval", "0.5", "--duration", "900",
         "--restarts", str(len(lab.servers))], timeout=300)
    return snap


def stop_probe(out):
    run([sys.executable, PROBE, "stop", "--out", out, "--timeout", "90"], timeout=120, check=False)
    path = os.path.join(out, "summary.json")
    assert os.path.exists(path), "the probe left no summary in %s (see probe.log there)" % out
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def rotate_under_probe(lab, out):
    """rotate-ca.yml while the probe runs; returns (rc, output, summary). The probe is stopped whatever happens."""
    snap = start_probe(lab, out)
    try:
        rc, output = lab.playbook(ROTATE_CA)
        # The current client follows the rotated bundle, as a kubeconfig user would after the rotation.
        shutil.copyfile(lab.tls(lab.servers[0], "server-ca.crt"), os.path.join(snap, "current.crt"))
        time.sleep(3)
    finally:
        summary = stop_probe(out)
    return rc, output, summary


def assert_probe_clean(summary):
    """The probe's verdict (real clients): 0 certificate failures, 0 acknowledged etcd writes lost, every failed write
    resolved, at most one availability blip per server restart and client; and enough traffic of every kind."""
    kinds = summary.get("kinds", {})
    parts = []
    for kind in ("old", "current", "etcd"):
        entry = kinds.get(kind, {})
        text = "%s ok=%s fail=%s failovers=%s cert_failures=%s blips=%s" % (
            kind, entry.get("ok"), entry.get("fail"), entry.get("failovers"), entry.get("cert_failures"), entry.get("blips"))
        writes = entry.get("writes")
        if writes:
            text += " writes acked=%s lost=%s failed=%s (written %s, absent %s, unresolved %s)" % (
                writes["acked"], writes["lost"], writes["failed"], writes["failed_written"], writes["failed_absent"], writes["unresolved"])
        if entry.get("failure_reasons") or entry.get("failover_reasons"):
            text += " (failure reasons %s, failover reasons %s)" % (entry.get("failure_reasons"), entry.get("failover_reasons"))
        parts.append(text)
    detail = "; ".join(parts)
    for kind in ("old", "current", "etcd"):
        assert kinds.get(kind, {}).get("ok", 0) > 10, "probe kind %s made too few requests: %s" % (kind, detail)
    assert summary["verdict"]["ok"], "probe verdict: %s; %s" % (summary["verdict"]["problems"], detail)
    return detail


def assert_new_tokens(lab, before):
    """Every token location carries K10<hashCA of the new server bundle> with the same user and password."""
    server_bundles = {h: open(lab.tls(h, "server-ca.crt"), "rb").read() for h in lab.servers}
    assert len(set(server_bundles.values())) == 1, "servers disagree on server-ca.crt after the rotation"
    new_hash = lab.hash_ca(lab.tls(lab.servers[0], "server-ca.crt"))
    old_hash = lab.ctx["old_token_hash"]
    assert re.fullmatch(r"[0-9a-f]{64}", new_hash) and new_hash != old_hash, (new_hash, old_hash)
    after = lab.tokens()
    assert set(after) == set(before), "token locations changed: %s -> %s" % (sorted(before), sorted(after))
    problems = []
    for (host, location), token in sorted(after.items()):
        old = before[(host, location)]
        if not old.startswith("K10"):
            # a bare password (the servers' own config here) has no CA hash to update
            if token != old:
                problems.append("%s:%s: bare password changed" % (host, location))
            continue
        match = re.fullmatch(r"K10([0-9a-f]{64})::(.+)", token)
        if not match or match.group(1) != new_hash or match.group(2) != old.split("::", 1)[1]:
            problems.append("%s:%s: %s… (want K10%s…::<same user:password>)" % (host, location, token[:20], new_hash[:12]))
    for host in lab.agents:
        if not before[(host, lab.etc + "/config.yaml")].startswith("K10"):
            problems.append("%s: agent token is not a K10 token" % host)
    # no file of /etc/rancher keeps the old hash anywhere else (env files, drop-ins)
    for host in lab.hosts:
        for dirpath, _dirs, files in os.walk(lab.path(host, "/etc/rancher")):
            for name in files:
                full = os.path.join(dirpath, name)
                if os.path.isfile(full) and ("K10" + old_hash).encode() in open(full, "rb").read():
                    problems.append("%s: %s still holds the old CA hash" % (host, full))
    assert not problems, "token locations:\n" + "\n".join(problems)
    return new_hash


def assert_agents_on_new_bundle(lab):
    bundle = open(lab.tls(lab.servers[0], "server-ca.crt"), "rb").read()
    client = open(lab.tls(lab.servers[0], "client-ca.crt"), "rb").read()
    for host in lab.hosts:
        with open(lab.path(host, lab.rancher + "/agent/server-ca.crt"), "rb") as handle:
            assert handle.read() == bundle, "%s: agent/server-ca.crt is not the servers' new bundle" % host
        with open(lab.path(host, lab.rancher + "/agent/client-ca.crt"), "rb") as handle:
            assert handle.read() == client, "%s: agent/client-ca.crt is not the servers' new client bundle" % host
    ready = lab.wait_all_ready(timeout=45)
    assert all(ready[h] == "True" for h in lab.agents), ready


def new_roots(old_bundles, new_bundles):
    """Self-signed certificates of the new bundles that were in no old bundle: the new roots."""
    old = {c.fingerprint(c.signature_hash_algorithm) for bundle in old_bundles.values() for c in bundle}
    roots = {}
    for name, bundle in new_bundles.items():
        for cert in bundle:
            if self_signed(cert) and cert.fingerprint(cert.signature_hash_algorithm) not in old:
                roots.setdefault(name, []).append(cert)
    return roots


def assert_leaves_chain(lab, old_bundles, new_bundles, trust_pem, work, untrusted_pem=""):
    """Every non-CA certificate in server/tls, server/tls/etcd and agent/ on every node: issued by the first certificate
    of a new bundle (not the old CA), and ``openssl verify -x509_strict`` with only ``trust_pem`` as anchors and only
    that new CA (plus ``untrusted_pem``, e.g. a custom intermediate) as intermediates succeeds. Returns the number of
    leaves per host."""
    os.makedirs(work, exist_ok=True)
    trust = os.path.join(work, "trust.pem")
    with open(trust, "w", encoding="ascii") as handle:
        handle.write(trust_pem)
    new_cas = {name: bundle[0] for name, bundle in new_bundles.items()}
    old_cas = {name: bundle[0] for name, bundle in old_bundles.items()}
    for name, ca in new_cas.items():
        assert ca != old_cas[name] and is_ca(ca), "%s: the first certificate of the new bundle is the old CA" % name
    openssl = _tool("openssl")
    counts, problems = {}, []
    for host in lab.hosts:
        base = lab.path(host, lab.rancher)
        files = sorted(glob.glob(base + "/server/tls/*.crt") + glob.glob(base + "/server/tls/etcd/*.crt") + glob.glob(base + "/agent/*.crt"))
        counts[host] = 0
        for path in files:
            rel = path[len(base) + 1:]
            leaf = certs_in(open(path, "rb").read())[0]
            if is_ca(leaf):
                continue
            counts[host] += 1
            issuer = [name for name, ca in new_cas.items() if leaf.issuer == ca.subject and issued_by(leaf, ca)]
            if not issuer:
                olds = [name for name, ca in old_cas.items() if issued_by(leaf, ca)]
                problems.append("%s %s: issuer %s is no new CA%s" % (host, rel, leaf.issuer.rfc4514_string(),
                                                                     " (it is the OLD %s)" % olds[0] if olds else ""))
                continue
            name = issuer[0]
            if any(issued_by(leaf, ca) for ca in old_cas.values()):
                problems.append("%s %s: also verifies under the old CA" % (host, rel))
            aki = key_id(leaf, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
            ski = key_id(new_cas[name], ExtensionOID.SUBJECT_KEY_IDENTIFIER)
            if aki is not None and ski is not None and aki != ski:
                problems.append("%s %s: AKI does not name the new %s" % (host, rel, name))
            leaf_file = os.path.join(work, "leaf.pem")
            ca_file = os.path.join(work, "ca.pem")
            with open(leaf_file, "w", encoding="ascii") as handle:
                handle.write(pem(leaf))
            with open(ca_file, "w", encoding="ascii") as handle:
                handle.write(pem(new_cas[name]) + untrusted_pem)
            result = run([openssl, "verify", "-x509_strict", "-CAfile", trust, "-untrusted", ca_file, leaf_file], check=False)
            if result.returncode != 0 or not result.stdout.strip().endswith(": OK"):
                problems.append("%s %s (issuer new %s): openssl verify: %s" % (host, rel, name, (result.stdout + result.stderr).strip()))
    assert not problems, "leaves not on the new CAs:\n" + "\n".join(problems)
    for host in lab.servers:
        assert counts[host] >= 13, "%s: only %d leaves found (%s)" % (host, counts[host], counts)
    for host in lab.agents:
        assert counts[host] >= 4, "%s: only %d leaves found (%s)" % (host, counts[host], counts)
    return counts


def recap(output):
    return {host: {"ok": int(ok), "changed": int(changed), "unreachable": int(unreach), "failed": int(failed)}
            for host, ok, changed, unreach, failed in RECAP.findall(output)}


def run_summary(output):
    """The lines the run_summary callback printed at the end of a run: first word (a host, "CA <name>", "Left to do",
    "Backups (rollback reads these)") -> the rest of its line."""
    assert "KUBEPKI.CERTS RUN SUMMARY" in output, "no run summary at the end of the run:\n%s" % output[-3000:]
    lines = output.rsplit("KUBEPKI.CERTS RUN SUMMARY", 1)[1].splitlines()[1:]
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def summary_paths(text):
    """The paths of a summary's "a, b and 2 more" list (the named ones)."""
    return [p for p in text.split(" and ")[0].split(", ") if p.startswith("/")]


def assert_summary_of_rotation(lab, output, old_bundles, new_bundles):
    """The run summary names every node and what happened to it, judged against the lab: every node restarted (its
    unit), every backup it names exists on that node, each CA line's old and new fingerprints are certificates of
    the bundles before and after (sha256 by cryptography), nothing left to do."""
    summary = run_summary(output)
    for host in lab.hosts:
        assert host in summary, "the summary does not name %s: %s" % (host, summary)
        assert re.search(r"(^|; )restarted %s \(\d+\.\d s\)" % re.escape(lab.unit(host)), summary[host]), (host, summary[host])
        for path in summary_paths(summary[host].split("backups: ", 1)[1] if "backups: " in summary[host] else ""):
            assert os.path.isdir(lab.path(host, path)), "%s: backup %s named in the summary does not exist" % (host, path)
    assert any("backups: /" in summary[h] for h in lab.servers), summary
    assert summary.get("Left to do") == "nothing", summary

    def prints(bundles):
        return {c.fingerprint(hashes.SHA256()).hex()[:12] for bundle in bundles.values() for c in bundle}
    ca_lines = {k[3:]: v for k, v in summary.items() if k.startswith("CA ")}  # etcd-server-ca: etcd/server-ca
    assert sorted(name.replace("etcd-", "etcd/", 1) for name in ca_lines) == sorted(CA_FILES), ca_lines
    for name, text in ca_lines.items():
        old, new = re.match(r"(\w+) -> (\w+) ", text).groups()
        assert old in prints(old_bundles) and new in prints(new_bundles) and new not in prints(old_bundles), (name, text)


def need(lab, *keys):
    missing = [key for key in keys if key not in lab.ctx]
    if missing:
        pytest.fail("an earlier step of this scenario did not complete (missing %s)" % ", ".join(missing), pytrace=False)


# ----------------------------------------------------------------------------------------------------------------
# shared scenario steps (A and B: k3s and RKE2; the lab's program picks units, paths and kubectl)


def kubectl(lab, host, *args, stdin=None):
    """kubectl inside ``host``: ``k3s kubectl`` on k3s, the kubectl RKE2 stages in its data dir on RKE2."""
    return lab.exec(host, lab.kubectl() + list(args), stdin=stdin).stdout


def token_review(lab, host, token):
    doc = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    return json.loads(kubectl(lab, host, "create", "-f", "-", "-o", "json", stdin=json.dumps(doc)))["status"]


def step_check_mode(lab):
    """rotate-ca.yml --check before anything else: a plan line per node (in restart order, the program's units and
    the token locations), and no file of any host, no service PID changed."""
    before, pids = lab.file_hashes(), lab.service_pids()
    rc, output = lab.playbook(ROTATE_CA, "--check")
    assert rc == 0, "rotate-ca.yml --check failed (rc %d):\n%s" % (rc, output[-6000:])
    for index, host in enumerate(lab.servers):
        assert re.search(r"%s: v\S+ server, restart %d of %d, one at a time; unit %s; token locations: "
                         % (host, index + 1, len(lab.servers), re.escape(lab.unit(host))), output), \
            "no plan line for %s:\n%s" % (host, output[-6000:])
    for host in lab.agents:
        assert re.search(r"%s: v\S+ agent, restarted after all servers, in batches; unit %s; token locations: [^\"]*%s/config\.yaml"
                         % (host, re.escape(lab.unit(host)), re.escape(lab.etc)), output), "no plan line for %s:\n%s" % (host, output[-6000:])
    assert "mode cross_sign (non-disruptive" in output
    after = lab.file_hashes()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, "check mode changed files: %s" % changed
    assert lab.service_pids() == pids, "check mode restarted a service"
    assert sum(1 for k in before if k.startswith("%s:" % lab.servers[0])) > 30, "hashing saw too few files: %d" % len(before)
    lab.ctx["checked"] = True


def step_token_before_rotation(lab):
    """A service-account token made before any rotation (verified after the service-key rotation)."""
    token = kubectl(lab, lab.servers[0], "create", "token", "default").strip()
    assert token.count(".") == 2 and jwt_header(token).get("alg") == "RS256", token[:40]
    lab.ctx["old_sa_token"] = token


def step_rotate(lab, work_dir):
    lab.ctx["old_bundles"] = lab.ca_bundles(lab.servers[0])
    lab.ctx["old_token_hash"] = lab.hash_ca(lab.tls(lab.servers[0], "server-ca.crt"))
    lab.ctx["tokens_before"] = lab.tokens()
    lab.ctx["pids_before_rotation"] = lab.service_pids()
    started = time.monotonic()
    rc, output, summary = rotate_under_probe(lab, os.path.join(work_dir, lab.state["name"] + "-probe"))
    seconds = time.monotonic() - started
    assert rc == 0, "rotate-ca.yml failed (rc %d):\n%s" % (rc, output[-6000:])
    detail = assert_probe_clean(summary)
    assert_summary_of_rotation(lab, output, lab.ctx["old_bundles"], lab.ca_bundles(lab.servers[0]))
    lab.ctx["rotated"] = {"seconds": round(seconds, 1), "probe": detail}
    sys.stderr.write("\n%s rotate-ca.yml: %.1f s; probe: %s\n" % (lab.state["name"], seconds, detail))


def step_new_tokens(lab):
    need(lab, "rotated")
    assert_new_tokens(lab, lab.ctx["tokens_before"])
    pids = lab.service_pids()
    same = [h for h in lab.hosts if pids[h] == lab.ctx["pids_before_rotation"][h]]
    assert not same, "not restarted by the rotation (still the old process, old token in memory): %s" % same
    assert_agents_on_new_bundle(lab)


def step_leaves(lab, work_dir):
    need(lab, "rotated")
    old = lab.ctx["old_bundles"]
    new = lab.ca_bundles(lab.servers[0])
    for host in lab.servers[1:]:
        assert {n: [c.fingerprint(c.signature_hash_algorithm) for c in b] for n, b in lab.ca_bundles(host).items()} == \
            {n: [c.fingerprint(c.signature_hash_algorithm) for c in b] for n, b in new.items()}, "%s: CA bundles differ from %s" % (host, lab.servers[0])
    roots = new_roots(old, new)
    assert sorted(roots) == sorted(CA_FILES) and all(len(r) == 1 for r in roots.values()), \
        "want exactly one new self-signed root per CA bundle: %s" % {n: [c.subject.rfc4514_string() for c in r] for n, r in roots.items()}
    trust = "".join(pem(r[0]) for r in roots.values())
    lab.ctx["leaves"] = assert_leaves_chain(lab, old, new, trust, os.path.join(work_dir, lab.state["name"] + "-verify"))


def step_second_run(lab):
    need(lab, "rotated")
    pids = lab.service_pids()
    rc, output = lab.playbook(ROTATE_CA)
    assert rc == 0, "second rotate-ca.yml failed (rc %d):\n%s" % (rc, output[-6000:])
    table = recap(output)
    assert set(table) == set(lab.hosts), "PLAY RECAP does not list every host: %s" % table
    changed = {h: r["changed"] for h, r in table.items() if r["changed"] or r["failed"] or r["unreachable"]}
    assert not changed, "the second run changed something: %s\n%s" % (changed, output[-6000:])
    assert lab.service_pids() == pids, "the second run restarted a service"


def step_service_key_rotation(lab):
    """rotate-service-key.yml restarts every server and no agent; the token made before both rotations and one made
    just before this one still pass a TokenReview (asked on server2), and a new token carries a new kid."""
    need(lab, "old_sa_token")
    before_token = kubectl(lab, lab.servers[0], "create", "token", "default").strip()
    pids = lab.service_pids()
    rc, output = lab.playbook(ROTATE_SERVICE_KEY)
    assert rc == 0, "rotate-service-key.yml failed (rc %d):\n%s" % (rc, output[-6000:])
    after = lab.service_pids()
    assert all(after[h] != pids[h] for h in lab.servers), "a server was not restarted: %s -> %s" % (pids, after)
    assert all(after[h] == pids[h] for h in lab.agents), "an agent was restarted: %s -> %s" % (pids, after)
    lab.wait_all_ready(timeout=45)
    old = lab.ctx["old_sa_token"]
    status = token_review(lab, lab.servers[1], old)
    assert status.get("authenticated") is True, "the token made before both rotations no longer verifies: %s" % status
    assert status["user"]["username"] == "system:serviceaccount:default:default", status
    status = token_review(lab, lab.servers[1], before_token)
    assert status.get("authenticated") is True, "the token made before rotate-service-key no longer verifies: %s" % status
    new = kubectl(lab, lab.servers[2], "create", "token", "default").strip()
    kids = [jwt_header(t).get("kid") for t in (old, before_token, new)]
    assert all(kids) and kids[2] not in kids[:2], "the new token's kid is not new: %s" % kids
    assert token_review(lab, lab.servers[1], new).get("authenticated") is True


def step_failing_gate_on_server2(lab):
    """A new rotation while server2's /readyz fails (the double's lab-fail-readyz, read at start): the run stops in
    server2's gate naming the failed check; server1 and server2 were restarted, server3 and the agents were not.
    Leaves the cluster half-rotated: the last step of a scenario."""
    need(lab, "rotated")
    server2 = lab.servers[1]
    config = lab.path(server2, lab.etc + "/config.yaml")
    with open(config, "a", encoding="utf-8") as handle:
        handle.write("lab-fail-readyz: true\n")
    pids = lab.service_pids()
    # A new rotation of the (once rotated) cluster: a fresh staging dir, else the loaded set counts as done.
    rc, output = lab.playbook(ROTATE_CA, "-e", "rolling_restart_timeout=15", "-e", "ca_rotation_staging_dir=/var/lib/kubepki/rotate-ca-2")
    assert rc != 0, "rotate-ca.yml succeeded although %s's /readyz fails:\n%s" % (server2, output[-6000:])
    fatal = [line for line in output.splitlines() if line.startswith("fatal: [%s]" % server2)]
    assert fatal, "no failure reported for %s:\n%s" % (server2, output[-6000:])
    assert "Gate" in output.split(fatal[0])[0].rsplit("TASK [", 1)[1].split("]", 1)[0], "%s failed outside the gate:\n%s" % (server2, output[-6000:])
    # why: the failed readyz check and its reason, as the apiserver answered ("[-]<check> failed: <reason>")
    # the result: on its line, or (at -vvv, as the ansible-runner jobs of scenario B run) as indented JSON below it
    result = fatal[0] + output.split(fatal[0], 1)[1].split("\n\n", 1)[0]
    assert "readyz" in result and "failed checks: lab-fail-readyz" in result, "the failure does not say why: %s" % result[:2000]
    after = lab.service_pids()
    assert after[lab.servers[0]] != pids[lab.servers[0]], "%s was not restarted before %s" % (lab.servers[0], server2)
    assert after[server2] != pids[server2], "%s was not restarted (its gate cannot have run)" % server2
    untouched = {h: (pids[h], after[h]) for h in lab.servers[2:] + lab.agents if after[h] != pids[h]}
    assert not untouched, "restarted after the failed gate: %s" % untouched
    table = recap(output)
    assert table.get(server2, {}).get("failed") == 1, table
    summary = run_summary(output)  # says where it stopped and what is left
    assert summary[server2].startswith("FAILED at Gate"), summary[server2]
    left = summary["Left to do"]
    assert "node not reached (%s)" % lab.servers[2] in left and "plays not run: Restart the agents" in left, left


def step_rotate_certs(lab):
    """rotate-certs.yml (role leaf_rotation): every service restarted; the client certificates `certificate rotate`
    removes are re-issued (new serial) by the same CAs; the CA bundles stay; every node Ready."""
    need(lab, "rotated")
    server1 = lab.servers[0]
    bundles = lab.ca_bundles(server1)
    client_ca, etcd_ca = bundles["client-ca"][0], bundles["etcd/server-ca"][0]
    watched = {h: {lab.rancher + "/agent/client-kubelet.crt": client_ca, lab.rancher + "/agent/client-kube-proxy.crt": client_ca}
               for h in lab.hosts}
    for host in lab.servers:
        watched[host][lab.rancher + "/server/tls/client-admin.crt"] = client_ca
        watched[host][lab.rancher + "/server/tls/etcd/client.crt"] = etcd_ca

    def serials():
        return {(h, p): certs_in(open(lab.path(h, p), "rb").read())[0].serial_number for h in watched for p in watched[h]}

    before, pids = serials(), lab.service_pids()
    rc, output = lab.playbook("rotate-certs.yml")
    assert rc == 0, "rotate-certs.yml failed (rc %d):\n%s" % (rc, output[-6000:])
    after = lab.service_pids()
    assert all(after[h] != pids[h] for h in lab.hosts), "not every service was restarted: %s -> %s" % (pids, after)
    for host in lab.servers:
        assert lab.ca_bundles(host) == bundles, "%s: rotate-certs changed a CA bundle" % host
    now = serials()
    problems = ["%s:%s kept its serial" % key for key in before if now[key] == before[key]]
    for host, paths in watched.items():
        for path, ca in paths.items():
            leaf = certs_in(open(lab.path(host, path), "rb").read())[0]
            if not issued_by(leaf, ca):
                problems.append("%s:%s is not issued by %s" % (host, path, ca.subject.rfc4514_string()))
    assert not problems, "leaves after rotate-certs:\n" + "\n".join(problems)
    lab.wait_all_ready(timeout=45)


def step_check_expiration_job(lab, work_dir):
    """check-expiration.yml as a job: the fleet report names every node, and the server CA's expiry it gives for
    server1 is the one cryptography reads from the file."""
    need(lab, "rotated")
    report_dir = os.path.join(work_dir, lab.state["name"] + "-expiry")
    rc, output = lab.playbook("check-expiration.yml", "-e", "check_expiration_report_dir=%s" % report_dir)
    assert rc == 0, "check-expiration.yml failed (rc %d):\n%s" % (rc, output[-6000:])
    with open(os.path.join(report_dir, "fleet-expiry.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    assert sorted(report["hosts"]) == sorted(lab.hosts), sorted(report["hosts"])
    with open(lab.tls(lab.servers[0], "server-ca.crt"), "rb") as handle:
        served = x509.load_pem_x509_certificates(handle.read())[0]
    entries = [e for e in report["certificates"] if e["host"] == lab.servers[0] and e["path"].endswith("/server-ca.crt")]
    assert entries and entries[0]["not_after"].startswith(served.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%S")), entries


def step_rollback(lab, work_dir):
    """rollback.yml with the rotation's id: every node back on the original CAs and join tokens, leaves re-issued by
    the original CAs, agents Ready; a second rollback changes nothing."""
    need(lab, "rotated")
    backups = sorted(os.listdir(lab.path(lab.servers[0], "/var/lib/kubepki/backup")))
    assert len(backups) == 1, "want one rotation's backup on server1: %s" % backups
    rotated = lab.ca_bundles(lab.servers[0])
    rc, output = lab.playbook("rollback.yml", "-e", "kubepki_rollback_id=%s" % backups[0])
    assert rc == 0, "rollback.yml failed (rc %d):\n%s" % (rc, output[-6000:])
    original = lab.ctx["old_bundles"]
    for host in lab.servers:
        assert lab.ca_bundles(host) == original, "%s: not back on the original CA bundles" % host
    assert lab.tokens() == lab.ctx["tokens_before"], "join tokens not restored"
    assert lab.hash_ca(lab.tls(lab.servers[0], "server-ca.crt")) == lab.ctx["old_token_hash"]
    assert_agents_on_new_bundle(lab)  # every node's agent/ copy equals the servers' (now original) bundles
    trust = "".join(pem(bundle[0]) for bundle in original.values())
    assert_leaves_chain(lab, rotated, original, trust, os.path.join(work_dir, lab.state["name"] + "-rollback"))
    pids = lab.service_pids()
    rc, output = lab.playbook("rollback.yml", "-e", "kubepki_rollback_id=%s" % backups[0])
    assert rc == 0, "second rollback.yml failed (rc %d):\n%s" % (rc, output[-6000:])
    changed = {h: r["changed"] for h, r in recap(output).items() if r["changed"] or r["failed"]}
    assert not changed, "the second rollback changed something: %s" % changed
    assert lab.service_pids() == pids, "the second rollback restarted a service"


def step_rollback_with_overridden_backup_dir(lab):
    """ca_rotation_backup_dir set to a non-default dir for a new rotation and for its rollback. The rotation backs up
    every node's tls dir (servers) and token locations there, none into the default dir; a rollback that is not told
    the dir fails naming the missing backup tree and changes nothing; with the dir it restores the CAs AND the tokens."""
    override = "/var/lib/kubepki/backup-override"
    default = "/var/lib/kubepki/backup"
    server1 = lab.servers[0]
    before_bundles, before_tokens, before_bytes = lab.ca_bundles(server1), lab.tokens(), lab.token_bytes()
    before_hash = lab.hash_ca(lab.tls(server1, "server-ca.crt"))

    def listing(host, path):
        full = lab.path(host, path)
        return sorted(os.listdir(full)) if os.path.isdir(full) else []

    default_trees = {h: listing(h, default) for h in lab.hosts}
    rc, output = lab.playbook(ROTATE_CA, "-e", "ca_rotation_backup_dir=%s" % override,
                              "-e", "ca_rotation_staging_dir=/var/lib/kubepki/rotate-ca-override")
    assert rc == 0, "rotate-ca.yml with ca_rotation_backup_dir=%s failed (rc %d):\n%s" % (override, rc, output[-6000:])
    assert lab.ca_bundles(server1) != before_bundles, "the rotation did not change the CAs"
    assert lab.tokens() != before_tokens, "the rotation did not change the tokens"
    ids = listing(server1, override)
    assert len(ids) == 1, "want one backup tree in %s on %s: %s" % (override, server1, ids)
    tree = "%s/%s" % (override, ids[0])
    assert {h: listing(h, default) for h in lab.hosts} == default_trees, "backups went to the default dir too"
    # every token location's pre-rotation bytes are in the tree, at its absolute path, on its own node
    for (host, location), data in sorted(before_bytes.items()):
        copy = lab.path(host, tree + location)
        assert os.path.isfile(copy), "%s: no copy of %s in %s" % (host, location, tree)
        with open(copy, "rb") as handle:
            assert handle.read() == data, "%s: the copy of %s is not its pre-rotation content" % (host, location)

    rotated_files = lab.file_hashes(prefixes=("/etc/rancher/", "/var/lib/rancher/"))
    pids = lab.service_pids()
    rc, output = lab.playbook("rollback.yml", "-e", "kubepki_rollback_id=%s" % ids[0])
    assert rc != 0, "rollback.yml without the backup dir succeeded:\n%s" % output[-6000:]
    assert "no backup tree %s/%s" % (default, ids[0]) in output, "the failure does not name the missing tree:\n%s" % output[-6000:]
    after = lab.file_hashes(prefixes=("/etc/rancher/", "/var/lib/rancher/"))
    changed = sorted(k for k in set(rotated_files) | set(after) if rotated_files.get(k) != after.get(k))
    assert not changed, "the refused rollback changed files: %s" % changed
    assert lab.service_pids() == pids, "the refused rollback restarted a service"

    rc, output = lab.playbook("rollback.yml", "-e", "kubepki_rollback_id=%s" % ids[0],
                              "-e", "ca_rotation_backup_dir=%s" % override)
    assert rc == 0, "rollback.yml with ca_rotation_backup_dir=%s failed (rc %d):\n%s" % (override, rc, output[-6000:])
    for host in lab.servers:
        assert lab.ca_bundles(host) == before_bundles, "%s: not back on the CA bundles from before the rotation" % host
    assert lab.tokens() == before_tokens, "join tokens not restored"
    assert lab.hash_ca(lab.tls(server1, "server-ca.crt")) == before_hash
    assert_agents_on_new_bundle(lab)  # every node's agent/ copy equals the servers' (restored) bundles


def cross_sign_lab(work_dir, harness, name, subnet, program, executor="ansible-playbook"):
    """Class fixture body: a 3 + 2 cluster on the default CAs; server3 keeps the full K10 join token in its config (as
    joined with a server's node-token) instead of the bare password: a server token location the rotation must
    update too. The collection's playbooks then run through ``executor`` (the lab's bootstrap always through
    ansible-playbook)."""
    lab = make_lab(work_dir, name, subnet, 3, 2, program, harness.collections_path(work_dir), harness)
    try:
        bootstrap(lab)
        config = lab.path(lab.servers[2], lab.etc + "/config.yaml")
        token = read_text(lab.path(lab.servers[0], lab.rancher + "/server/token")).strip()
        text = read_text(config)
        password = token.split("::", 1)[1].split(":", 1)[1]
        assert "token: %s\n" % password in text
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(text.replace("token: %s\n" % password, "token: %s\n" % token))
        lab.executor = executor
        yield lab
    finally:
        teardown(lab)


# ----------------------------------------------------------------------------------------------------------------
# A and B share their first seven steps; each scenario class gives the class-scoped ``lab`` fixture. pytest collects
# a base class's tests before the subclass's own, so the steps keep their numbered order.


@pytest.fixture(scope="class")
def lab(request, work_dir, lab_harness):
    """The lab of a CrossSignSteps scenario class, as its ``LAB`` names it."""
    yield from cross_sign_lab(work_dir, lab_harness, *request.cls.LAB, executor=request.cls.EXECUTOR)


class CrossSignSteps:
    """Steps 01-07 of a cross-sign rotation on a 3 + 2 lab on the default self-signed CAs (not collected itself).
    A scenario class names its lab in ``LAB``: (lab name, subnet, distribution) and how playbooks run in
    ``EXECUTOR``."""

    LAB: tuple = ()
    EXECUTOR = "ansible-playbook"

    def test_01_check_mode_changes_no_file(self, lab):
        step_check_mode(lab)

    def test_02_token_before_rotation(self, lab):
        step_token_before_rotation(lab)

    def test_03_rotate_under_probe(self, lab, work_dir):
        step_rotate(lab, work_dir)

    def test_04_every_node_has_the_new_token(self, lab):
        step_new_tokens(lab)

    def test_05_every_leaf_chains_to_the_new_intermediates(self, lab, work_dir):
        step_leaves(lab, work_dir)

    def test_06_second_run_changes_nothing(self, lab):
        step_second_run(lab)

    def test_07_service_key_rotation_restarts_servers_only(self, lab):
        step_service_key_rotation(lab)


# A: k3s, 3 servers + 2 agents, default CAs
@pytest.mark.scenario
class TestK3sCrossSign(CrossSignSteps):
    """A. k3s 3 + 2 on the default self-signed CAs."""

    LAB = ("kpra", "10.123.120.0/24", "k3s")

    def test_08_rotate_certs_reissues_leaves_under_the_same_cas(self, lab):
        step_rotate_certs(lab)

    def test_09_failing_gate_on_server2_leaves_the_rest_untouched(self, lab):
        step_failing_gate_on_server2(lab)


# B: RKE2, 3 servers + 2 agents, default CAs
@pytest.mark.scenario
class TestRke2CrossSign(CrossSignSteps):
    """B. RKE2 3 + 2 on the default self-signed CAs (-e kubepki_distribution=rke2): A's steps, and rollback.yml
    after the service-key rotation (back to the CAs the failing-gate rotation then starts from)."""

    LAB = ("kprb", "10.123.121.0/24", "rke2")
    EXECUTOR = "ansible-runner"  # every playbook of B as an AWX job template runs it, -vvv, every event scanned

    def test_08_check_expiration_as_a_job(self, lab, work_dir):
        step_check_expiration_job(lab, work_dir)

    def test_09_rollback_restores_the_original_cas_and_tokens(self, lab, work_dir):
        step_rollback(lab, work_dir)

    def test_10_rollback_with_an_overridden_backup_dir(self, lab):
        step_rollback_with_overridden_backup_dir(lab)

    def test_11_failing_gate_on_server2_leaves_the_rest_untouched(self, lab):
        step_failing_gate_on_server2(lab)

    def test_12_every_job_event_was_scanned(self, lab):
        # B's jobs: check mode, rotation, second run, service key, check-expiration, rollbacks, failing gate
        assert lab.executor == "ansible-runner" and lab.runs >= 9 and lab.events_scanned > 500, \
            (lab.runs, lab.events_scanned)


# ----------------------------------------------------------------------------------------------------------------
# C + D: 3 + 1 on a custom root + intermediate, k3s and RKE2


def custom_ca_lab(work_dir, harness, name, subnet, program):
    """Class fixture body: the custom hierarchy (kubepki.certs.ca_chain, the program's layout) in server1's tls dir
    before its first start; the double (as k3s/RKE2) then keeps these CAs."""
    lab = make_lab(work_dir, name, subnet, 3, 1, program, harness.collections_path(work_dir), harness)
    try:
        lab.adhoc(lab.servers[0], "kubepki.certs.ca_chain", "path=%s/server/tls distribution=%s" % (lab.rancher, program))
        bootstrap(lab)
        yield lab
    finally:
        teardown(lab)


@pytest.fixture(scope="class")
def custom_lab(request, work_dir, lab_harness):
    """The lab of the requesting class: its ``LAB`` = (name, subnet, program)."""
    name, subnet, program = request.cls.LAB
    yield from custom_ca_lab(work_dir, lab_harness, name, subnet, program)


@pytest.mark.scenario
class CustomCASteps:
    """D (refusal of a new_root set) on a custom-CA cluster, then C (renew keeps the token, intermediate and root).
    Not collected itself: the Test* subclasses below name their lab (``LAB``)."""

    def test_01_new_root_is_refused_before_any_node_is_touched(self, custom_lab):
        lab = custom_lab
        before = lab.file_hashes(prefixes=("/etc/rancher/", "/var/lib/rancher/"))
        pids, store = lab.service_pids(), lab.datastore_hash()
        rc, output = lab.playbook(ROTATE_CA, "-e", "ca_rotation_mode=new_root")
        assert rc != 0, "a new_root rotation ran without ca_rotation_allow_disruptive:\n%s" % output[-6000:]
        match = re.search(r"staged set is not safe to load: (server-ca|client-ca|request-header-ca|etcd-server-ca|etcd-peer-ca) "
                          r"([a-z_]+): ", output)
        assert match, "the refusal does not name a CA and a failed check of ca_verify:\n%s" % output[-6000:]
        assert "certificate rotate-ca" not in output.split(match.group(0))[1], "rotate-ca ran after the refusal"
        after = lab.file_hashes(prefixes=("/etc/rancher/", "/var/lib/rancher/"))
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        assert not changed, "files changed although the set was refused: %s" % changed
        assert lab.service_pids() == pids, "a service was restarted although the set was refused"
        assert lab.datastore_hash() == store, "the datastore (bootstrap data) changed although the set was refused"
        assert not glob.glob(os.path.join(lab.base, "datastore", ".rotate-ca-tmp-*"))

    def test_02_renew_keeps_token_intermediate_and_root(self, custom_lab, work_dir):
        lab = custom_lab
        server1 = lab.servers[0]
        root = certs_in(open(lab.tls(server1, "root-ca.pem"), "rb").read())[0]
        intermediate = certs_in(open(lab.tls(server1, "intermediate-ca.pem"), "rb").read())[0]
        old = lab.ca_bundles(server1)
        for name, bundle in old.items():
            assert bundle[1:] == [intermediate, root], "%s: the custom bundle is not CA + intermediate + root" % name
        tokens = lab.token_bytes()
        hierarchy = {p: sha256_file(lab.tls(server1, p)) for p in ("root-ca.pem", "root-ca.key", "intermediate-ca.pem", "intermediate-ca.key")}
        pids = lab.service_pids()
        rc, output = lab.playbook(ROTATE_CA, "-e", "ca_rotation_mode=renew")
        assert rc == 0, "rotate-ca.yml -e ca_rotation_mode=renew failed (rc %d):\n%s" % (rc, output[-6000:])
        changed_tokens = sorted("%s:%s" % k for k, v in lab.token_bytes().items() if tokens[k] != v)
        assert not changed_tokens, "renew changed token locations: %s" % changed_tokens
        assert {p: sha256_file(lab.tls(server1, p)) for p in hierarchy} == hierarchy, "the root or intermediate files changed"
        after = lab.service_pids()
        assert all(after[h] != pids[h] for h in lab.hosts), "not every service was restarted: %s -> %s" % (pids, after)
        new = lab.ca_bundles(server1)
        for name, bundle in new.items():
            assert bundle[0] != old[name][0], "%s: not renewed" % name
            assert bundle[1:] == [intermediate, root], "%s: the new bundle is not new CA + the SAME intermediate + root" % name
            assert issued_by(bundle[0], intermediate), "%s: the new CA is not issued by the intermediate" % name
        for host in lab.servers[1:]:
            assert lab.ca_bundles(host) == new, "%s: CA bundles differ from %s" % (host, server1)
        assert_agents_on_new_bundle(lab)
        work = os.path.join(work_dir, lab.state["name"] + "-verify")
        assert_leaves_chain(lab, old, new, pem(root), work, untrusted_pem=pem(intermediate))
        # the intermediate too must be on the chain openssl builds: anchors = the root only, untrusted = new CA;
        # the new CA itself verifies strictly under root + intermediate
        with open(os.path.join(work, "root.pem"), "w", encoding="ascii") as handle:
            handle.write(pem(root))
        with open(os.path.join(work, "intermediate.pem"), "w", encoding="ascii") as handle:
            handle.write(pem(intermediate))
        for name, bundle in new.items():
            with open(os.path.join(work, "newca.pem"), "w", encoding="ascii") as handle:
                handle.write(pem(bundle[0]))
            result = run([_tool("openssl"), "verify", "-x509_strict", "-CAfile", os.path.join(work, "root.pem"),
                          "-untrusted", os.path.join(work, "intermediate.pem"), os.path.join(work, "newca.pem")], check=False)
            assert result.returncode == 0, "%s: %s" % (name, result.stdout + result.stderr)


class TestK3sCustomCA(CustomCASteps):
    """C + D on k3s 3 + 1."""

    LAB = ("kprc", "10.123.122.0/24", "k3s")


class TestRke2CustomCA(CustomCASteps):
    """C + D on RKE2 3 + 1 (ca_chain distribution=rke2, -e kubepki_distribution=rke2)."""

    LAB = ("kprd", "10.123.123.0/24", "rke2")
