# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""check-expiration.yml at fleet size on the lab, with every report format, measured in one run.

The lab comes up (default 3 servers + 20 agents), the k3s (or RKE2) double is installed and the cluster bootstrapped
(not timed), so every node has the certificates and kubeconfigs the double writes, in the distribution's layout. The
SSH connections of the bootstrap are closed, then `ansible-playbook check-expiration.yml` runs once, timed, cold, with
this checkout's ansible.cfg (what an operator running it from the repository gets), every report format the role
writes (the Prometheus textfile on each node through check_expiration_textfile, and on the controller whatever the
role writes: fleet-expiry.json, .md, .prom, ...) and a callback that records every task result. Then the outputs are
checked (the report names every host, every node has its textfile) and the lab is torn down, also on failure or
SIGTERM.

Prints the wall time and where it went, from that one run: ansible-playbook's start-up before the first task, each
task's span (first start to last end over its hosts) with its result count, grouped as validation, node checks, node
files, controller report and the rest, the per-node cert_check times, and the end after the last task.

Usage (root; from the repository root, after scripts/bootstrap.sh):
  .venv/bin/python bench/bench_check_expiration.py [--servers 3] [--agents 20] [--distribution k3s|rke2]
ANSIBLE_COLLECTIONS_PATH may name a tree holding ansible_collections/kubepki/certs; otherwise a symlink to this
checkout is used.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench_rotate_ca import BOOTSTRAP, DOUBLE, LAB, ROOT, collection_tree, run, union_seconds

TARGET_SECONDS = 30.0
TEXTFILE = "/var/lib/kubepki/bench-expiry.prom"  # /var/lib/kubepki is private per lab host
CHECK_ACTION = "cert_check"
VALIDATE_ACTION = "validate_argument_spec"
LAB_NAME = "kpkx"
LAB_SUBNET = "10.123.241.0/24"


def _terminate(signum, _frame):
    # SIGTERM/SIGHUP end the run like Ctrl-C: the finally blocks tear the lab down
    raise KeyboardInterrupt("signal %d" % signum)


def close_control_sockets(lab_dir: str) -> None:
    """End the SSH multiplexers the bootstrap left, so the timed run opens its connections as a fresh run does."""
    control_dir = os.path.join(lab_dir, "cp")
    for entry in sorted(os.listdir(control_dir)) if os.path.isdir(control_dir) else []:
        subprocess.run(["ssh", "-F", "/dev/null", "-o", "ControlPath=" + os.path.join(control_dir, entry), "-O", "exit",
                        "kubepki-lab"], capture_output=True, check=False, timeout=10)


def short_action(action: str) -> str:
    return action.rsplit(".", 1)[-1]


def phase_of(record: dict) -> str:
    if record["delegated"] or record.get("delegate_to"):
        return "controller report"
    action = short_action(record["action"])
    if action == VALIDATE_ACTION:
        return "validation"
    if action == CHECK_ACTION:
        return "node checks"
    if action in ("copy", "template", "file"):
        return "node files"
    return "other"


def task_spans(records: list) -> list:
    """(task, phase, first start, last end, results, skipped) in the order the tasks ran; skipped results count too
    (a skipped task still costs each host a worker on the controller)."""
    spans = {}
    for record in records:
        if record["start"] is None:
            continue
        key = record["task"]
        if key not in spans:
            spans[key] = [record["task"], phase_of(record), record["start"], record["end"], 0, 0]
        span = spans[key]
        span[2], span[3] = min(span[2], record["start"]), max(span[3], record["end"])
        span[5 if record["status"] == "skipped" else 4] += 1
        if record["status"] != "skipped" and span[1] == "other":
            span[1] = phase_of(record)
    return sorted((tuple(span) for span in spans.values()), key=lambda span: span[2])


def check_outputs(lab_dir: str, report_dir: str, hosts: list) -> dict:
    """What the run wrote: every host with entries in fleet-expiry.json, a textfile on every node; the report files."""
    with open(os.path.join(report_dir, "fleet-expiry.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    reported = {entry["host"] for entry in report["certificates"]}
    absent = [host for host in hosts if host not in reported]
    if absent:
        sys.exit("fleet-expiry.json has no entry of %s" % ", ".join(absent))
    missing = [host for host in hosts
               if not os.path.isfile(os.path.join(lab_dir, "hosts", host, "root", TEXTFILE.lstrip("/")))]
    if missing:
        sys.exit("no textfile %s on %s" % (TEXTFILE, ", ".join(missing)))
    return {"files": sorted(os.listdir(report_dir)), "entries": report["total"], "counts": report["counts"]}


def measure(servers: int, agents: int, distribution: str, workdir: str, env: dict) -> dict:
    lab_dir = os.path.join(workdir, "lab")
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    inventory = os.path.join(lab_dir, "inventory.ini")
    report_dir = os.path.join(workdir, "reports")
    timing = os.path.join(workdir, "timing.jsonl")
    up_seconds = run([sys.executable, LAB, "up", "--servers", str(servers), "--agents", str(agents), "--dir", lab_dir,
                      "--name", LAB_NAME, "--subnet", LAB_SUBNET, "--timeout", "60"])
    try:
        run(["/usr/bin/python3", DOUBLE, "install", "--root", "/"])
        bootstrap_seconds = run([playbook, "-i", inventory, BOOTSTRAP, "-e", "lab_dir=" + lab_dir,
                                 "-e", "kubepki_distribution=" + distribution, "-f", "25"],
                                env=env, log=os.path.join(workdir, "bootstrap.log"))
        close_control_sockets(lab_dir)
        # the operator's callbacks (ansible.cfg: the run summary) and the benchmark's recorder
        bench_env = dict(env, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), KUBEPKI_TIMING_FILE=timing,
                         ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "bench", "callback_plugins"),
                         ANSIBLE_CALLBACKS_ENABLED="kubepki.certs.run_summary,kubepki_timing")
        load_before = os.getloadavg()
        started = time.time()
        wall = run([playbook, "-i", inventory, os.path.join(ROOT, "check-expiration.yml"),
                    "-e", "kubepki_distribution=" + distribution, "-e", "check_expiration_warn_days=120",
                    "-e", "check_expiration_textfile=" + TEXTFILE, "-e", "check_expiration_report_dir=" + report_dir],
                   env=bench_env, log=os.path.join(workdir, "check-expiration.log"))
        ended = started + wall
        load_after = os.getloadavg()
        with open(timing, encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
        hosts = ["server%d" % i for i in range(1, servers + 1)] + ["agent%d" % i for i in range(1, agents + 1)]
        outputs = check_outputs(lab_dir, report_dir, hosts)
    finally:
        run([sys.executable, LAB, "down", "--dir", lab_dir])
    return {"wall": wall, "started": started, "ended": ended, "records": records, "outputs": outputs,
            "up": up_seconds, "bootstrap": bootstrap_seconds, "load": (load_before, load_after)}


def print_result(result: dict, servers: int, agents: int, distribution: str) -> None:
    records, wall = result["records"], result["wall"]
    spans = task_spans(records)
    print("lab %d servers + %d agents (%s): up %.1f s, bootstrap %.1f s (not timed)"
          % (servers, agents, distribution, result["up"], result["bootstrap"]))
    before, after = ("/".join("%.2f" % value for value in load) for load in result["load"])
    print("load average 1/5/15 min before %s, after %s" % (before, after))
    print("report files: %s; %d entries, %s" % (", ".join(result["outputs"]["files"]), result["outputs"]["entries"],
                                                json.dumps(result["outputs"]["counts"], sort_keys=True)))
    print()
    first = spans[0][2] if spans else result["ended"]
    last = max(span[3] for span in spans) if spans else result["ended"]
    print("%8s  %7s  %7s  %-18s  %s" % ("span s", "results", "skipped", "phase", "task"))
    print("%8.1f  %7s  %7s  %-18s  %s" % (first - result["started"], "", "", "start-up", "ansible-playbook start to first task"))
    for task, phase, start, end, count, skipped in spans:
        print("%8.1f  %7d  %7d  %-18s  %s" % (end - start, count, skipped, phase, task))
    print("%8.1f  %7s  %7s  %-18s  %s" % (result["ended"] - last, "", "", "end", "last task to exit (summary callbacks)"))
    print()
    phases = {}
    for _task, phase, start, end, _count, _skipped in spans:
        phases.setdefault(phase, []).append((start, end))
    print("wall %.1f s (target <= %.0f s: %s)" % (wall, TARGET_SECONDS, "met" if wall <= TARGET_SECONDS else "NOT met"))
    print("  start-up %.1f s" % (first - result["started"]))
    for phase in ("validation", "node checks", "node files", "controller report", "other"):
        if phase in phases:
            print("  %-17s %.1f s" % (phase, union_seconds(phases[phase])))
    print("  end %.1f s" % (result["ended"] - last))
    checks = sorted(r["end"] - r["start"] for r in records
                    if short_action(r["action"]) == CHECK_ACTION and r["start"] and r["status"] != "skipped")
    if checks:
        print("cert_check per node: min %.2f s, median %.2f s, max %.2f s over %d nodes (each includes its SSH round trip)"
              % (checks[0], statistics.median(checks), checks[-1], len(checks)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--distribution", choices=("k3s", "rke2"), default="k3s")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the lab needs root (network and mount namespaces)")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="false", ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="false")
    with tempfile.TemporaryDirectory(prefix="kubepki-bench-") as workdir:
        if not env.get("ANSIBLE_COLLECTIONS_PATH"):
            env["ANSIBLE_COLLECTIONS_PATH"] = collection_tree(workdir, "current", ROOT)
        print("measuring check-expiration.yml: %d servers + %d agents (%s) ..."
              % (args.servers, args.agents, args.distribution), flush=True)
        result = measure(args.servers, args.agents, args.distribution, workdir, env)
    print()
    print_result(result, args.servers, args.agents, args.distribution)
    return 0


if __name__ == "__main__":
    sys.exit(main())
