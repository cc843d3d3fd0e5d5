# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""rotate_ca at fleet size on the lab, measured in one run.

For each topology (default 3+2 and 3+20): lab up, k3s double installed, cluster bootstrapped (not timed),
then `ansible-playbook rotate-ca.yml` timed with a callback that records every task result. Prints wall time,
time spent waiting in restarts and health gates, the rest (orchestration overhead), tasks executed per
server and per agent, and the wall-time growth per added agent between the two topologies.

Usage (root; from the repository root, after scripts/bootstrap.sh):
  ANSIBLE_COLLECTIONS_PATH=<dir holding ansible_collections/kubepki/certs> .venv/bin/python bench/bench_rotate_ca.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, "tests", "lab", "kubepki_lab.py")
DOUBLE = os.path.join(ROOT, "tests", "lab", "double", "k3s_double.py")
BOOTSTRAP = os.path.join(ROOT, "tests", "lab", "playbooks", "bootstrap_cluster.yml")
WAIT_ACTIONS = {"ansible.builtin.service", "service"}
GATE_PREFIX = "Gate - "


def run(argv, *, env=None, timeout=1800, log=None):
    started = time.monotonic()
    result = subprocess.run(argv, env=env, timeout=timeout, check=False, capture_output=True, text=True)
    if log:
        with open(log, "w", encoding="utf-8") as handle:
            handle.write(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit("command failed (rc %d): %s\n%s" % (result.returncode, " ".join(argv), (result.stdout + result.stderr)[-3000:]))
    return time.monotonic() - started


def union_seconds(intervals) -> float:
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def measure(servers: int, agents: int, workdir: str, env: dict) -> dict:
    lab_dir = os.path.join(workdir, "lab-%d-%d" % (servers, agents))
    run([sys.executable, LAB, "up", "--servers", str(servers), "--agents", str(agents), "--dir", lab_dir,
         "--name", "kpkb", "--subnet", "10.123.240.0/24", "--timeout", "60"])
    try:
        run(["/usr/bin/python3", DOUBLE, "install", "--root", "/"])
        inventory = os.path.join(lab_dir, "inventory.ini")
        playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
        bootstrap_seconds = run([playbook, "-i", inventory, BOOTSTRAP, "-e", "lab_dir=" + lab_dir, "-f", "25"],
                                env=env, log=os.path.join(lab_dir, "bootstrap.log"))
        timing = os.path.join(lab_dir, "timing.jsonl")
        bench_env = dict(env, KUBEPKI_TIMING_FILE=timing, ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "bench", "callback_plugins"),
                         ANSIBLE_CALLBACKS_ENABLED="kubepki_timing")
        wall = run([playbook, "-i", inventory, os.path.join(ROOT, "rotate-ca.yml"), "-f", "25",
                    "-e", "kubepki_agent_batch=%d" % max(5, agents // 2)], env=bench_env,
                   log=os.path.join(lab_dir, "rotate-ca.log"))
        with open(timing, encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
    finally:
        run([sys.executable, LAB, "down", "--dir", lab_dir])
    waits = [(r["start"], r["end"]) for r in records if r["start"] and r["status"] != "skipped"
             and (r["action"] in WAIT_ACTIONS or r["task"].startswith(GATE_PREFIX))]
    waiting = union_seconds(waits)
    per_host = {}
    for record in records:
        if record["status"] != "skipped":
            per_host[record["host"]] = per_host.get(record["host"], 0) + 1
    server_tasks = [per_host.get("server%d" % i, 0) for i in range(1, servers + 1)]
    agent_tasks = [per_host.get("agent%d" % i, 0) for i in range(1, agents + 1)]
    spans = {}
    for record in records:
        if record["start"] and record["status"] != "skipped":
            first, last, hosts = spans.get(record["task"], (record["start"], record["end"], 0))
            spans[record["task"]] = (min(first, record["start"]), max(last, record["end"]), hosts + 1)
    return {"servers": servers, "agents": agents, "wall": wall, "waiting": waiting, "overhead": wall - waiting,
            "bootstrap": bootstrap_seconds, "server_tasks_max": max(server_tasks), "agent_tasks_max": max(agent_tasks or [0]),
            "spans": spans}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", default="3+2,3+20", help="comma-separated servers+agents (default 3+2,3+20)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the lab needs root (network and mount namespaces)")
    # the repository's ansible.cfg (pipelining, forks) is what an operator running rotate-ca.yml from here gets
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="false", ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="false",
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"))
    if not env.get("ANSIBLE_COLLECTIONS_PATH"):
        sys.exit("set ANSIBLE_COLLECTIONS_PATH to a tree holding ansible_collections/kubepki/certs")
    results = []
    with tempfile.TemporaryDirectory(prefix="kubepki-bench-") as workdir:
        for topology in args.topologies.split(","):
            servers, agents = (int(part) for part in topology.split("+"))
            print("measuring %d servers + %d agents ..." % (servers, agents), flush=True)
            results.append(measure(servers, agents, workdir, env))
    print()
    header = ("topology", "wall s", "waiting s", "overhead s", "tasks/server", "tasks/agent", "bootstrap s")
    print("%-9s %9s %12s %10s %14s %14s %11s" % header)
    for r in results:
        row = ("%d+%d" % (r["servers"], r["agents"]), r["wall"], r["waiting"], r["overhead"], r["server_tasks_max"],
               r["agent_tasks_max"], r["bootstrap"])
        print("%-9s %9.1f %12.1f %10.1f %14d %14d %11.1f" % row)
    for r in results:
        print("\n%d+%d: slowest tasks (first start to last end over all hosts; a task repeated per batch sums)"
              % (r["servers"], r["agents"]))
        for task, (first, last, hosts) in sorted(r["spans"].items(), key=lambda kv: kv[1][0] - kv[1][1])[:12]:
            print("  %6.1f s  %3d results  %s" % (last - first, hosts, task))
    if len(results) >= 2 and results[-1]["agents"] != results[0]["agents"]:
        growth = (results[-1]["wall"] - results[0]["wall"]) / (results[-1]["agents"] - results[0]["agents"])
        print("wall time growth per added agent: %.2f s (targets: <= 2 s per agent, overhead <= 60 s for 3+20, "
              "<= 12 tasks per agent, <= 25 per server)" % growth)
        first, last = results[0], results[-1]
        ratio = last["overhead"] / max(first["overhead"], 0.1)
        print("overhead ratio %d+%d / %d+%d: %.2f" % (last["servers"], last["agents"], first["servers"], first["agents"], ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
