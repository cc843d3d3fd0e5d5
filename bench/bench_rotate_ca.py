# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""rotate_ca at fleet size on the lab, measured in one run.

For each topology (default 3+2 and 3+20): lab up, k3s double installed, cluster bootstrapped (not timed),
then `ansible-playbook rotate-ca.yml` timed with a callback that records every task result. Prints wall time,
time spent waiting in restarts and health gates, the rest (orchestration overhead), tasks executed per
server and per agent, and the wall-time growth per added agent between the two topologies.

With --baseline COMMIT the same topologies also run the collection of an earlier commit (checked out with
`git worktree add` into a temporary directory, removed afterwards), baseline and current in turn per topology, on
the same lab harness and double (this tree's), and the figures are printed side by side with the ratios.

Usage (root; from the repository root, after scripts/bootstrap.sh):
  ANSIBLE_COLLECTIONS_PATH=<dir holding ansible_collections/kubepki/certs> .venv/bin/python bench/bench_rotate_ca.py
  .venv/bin/python bench/bench_rotate_ca.py --baseline <commit>   # current = this checkout
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
WAIT_ACTIONS = {"ansible.builtin.service", "service", "kubepki.certs.restart_node", "restart_node"}
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


def collection_tree(workdir: str, label: str, checkout: str) -> str:
    """A collections path whose kubepki.certs is ``checkout`` (a symlink, as scripts/demo.sh makes)."""
    tree = os.path.join(workdir, "collections-" + label)
    os.makedirs(os.path.join(tree, "ansible_collections", "kubepki"), exist_ok=True)
    os.symlink(checkout, os.path.join(tree, "ansible_collections", "kubepki", "certs"))
    return tree


def waiting_interval(record: dict) -> tuple:
    """Restarts and gates are waiting; the leaf check closing a restart_node call is overhead, as its own task was."""
    return record["start"], record["end"] - record.get("leaves_elapsed", 0.0)


def measure(servers: int, agents: int, workdir: str, env: dict, checkout: str = ROOT, label: str = "current") -> dict:
    lab_dir = os.path.join(workdir, "lab-%s-%d-%d" % (label, servers, agents))
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
        bench_env["ANSIBLE_CONFIG"] = os.path.join(checkout, "ansible.cfg")
        wall = run([playbook, "-i", inventory, os.path.join(checkout, "rotate-ca.yml"), "-f", "25",
                    "-e", "kubepki_agent_batch=%d" % max(5, agents // 2)], env=bench_env,
                   log=os.path.join(lab_dir, "rotate-ca.log"))
        with open(timing, encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
    finally:
        run([sys.executable, LAB, "down", "--dir", lab_dir])
    waits = [waiting_interval(r) for r in records if r["start"] and r["status"] != "skipped"
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
    return {"label": label, "servers": servers, "agents": agents, "wall": wall, "waiting": waiting, "overhead": wall - waiting,
            "bootstrap": bootstrap_seconds, "server_tasks_max": max(server_tasks), "agent_tasks_max": max(agent_tasks or [0]),
            "spans": spans}


def print_results(results: list) -> None:
    header = ("tree", "topology", "wall s", "waiting s", "overhead s", "tasks/server", "tasks/agent", "bootstrap s")
    print("%-9s %-9s %9s %12s %10s %14s %14s %11s" % header)
    for r in results:
        row = (r["label"], "%d+%d" % (r["servers"], r["agents"]), r["wall"], r["waiting"], r["overhead"],
               r["server_tasks_max"], r["agent_tasks_max"], r["bootstrap"])
        print("%-9s %-9s %9.1f %12.1f %10.1f %14d %14d %11.1f" % row)
    for r in results:
        print("\n%s %d+%d: slowest tasks (first start to last end over all hosts; a task repeated per batch sums)"
              % (r["label"], r["servers"], r["agents"]))
        for task, (first, last, hosts) in sorted(r["spans"].items(), key=lambda kv: kv[1][0] - kv[1][1])[:12]:
            print("  %6.1f s  %3d results  %s" % (last - first, hosts, task))


def summary(results: list) -> dict:
    """Growth per added agent and overheads of one tree's results (first and last topology)."""
    first, last = results[0], results[-1]
    growth = (last["wall"] - first["wall"]) / (last["agents"] - first["agents"]) if last["agents"] != first["agents"] else None
    return {"growth": growth, "first": first, "last": last}


def print_summaries(by_label: dict) -> None:
    print()
    sums = {label: summary(results) for label, results in by_label.items()}
    for label, figures in sums.items():
        first, last = figures["first"], figures["last"]
        if figures["growth"] is not None:
            print("%s: wall time growth per added agent %.2f s (target <= 2 s); overhead %d+%d %.1f s (target <= 45 s)"
                  % (label, figures["growth"], last["servers"], last["agents"], last["overhead"]))
    if len(sums) == 2:
        base, current = sums["baseline"], sums["current"]
        print("ratios current / baseline:")
        for b, c in zip(by_label["baseline"], by_label["current"]):
            print("  %d+%d: wall %.2f, overhead %.2f" % (c["servers"], c["agents"], c["wall"] / b["wall"],
                                                         c["overhead"] / max(b["overhead"], 0.1)))
        if base["growth"] and current["growth"] is not None:
            print("  growth per added agent: %.2f" % (current["growth"] / base["growth"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", default="3+2,3+20", help="comma-separated servers+agents (default 3+2,3+20)")
    parser.add_argument("--baseline", metavar="COMMIT", help="also measure this commit (git worktree), in turn with the current tree")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the lab needs root (network and mount namespaces)")
    # each tree's ansible.cfg (pipelining, forks) is what an operator running rotate-ca.yml from it gets
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="false", ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="false")
    by_label = {}
    with tempfile.TemporaryDirectory(prefix="kubepki-bench-") as workdir:
        trees = []
        if args.baseline:
            base_checkout = os.path.join(workdir, "baseline")
            run(["git", "-C", ROOT, "worktree", "add", "--detach", base_checkout, args.baseline])
            trees.append(("baseline", base_checkout, collection_tree(workdir, "baseline", base_checkout)))
            trees.append(("current", ROOT, collection_tree(workdir, "current", ROOT)))
        else:
            if not env.get("ANSIBLE_COLLECTIONS_PATH"):
                sys.exit("set ANSIBLE_COLLECTIONS_PATH to a tree holding ansible_collections/kubepki/certs, or use --baseline")
            trees.append(("current", ROOT, env["ANSIBLE_COLLECTIONS_PATH"]))
        try:
            for topology in args.topologies.split(","):
                servers, agents = (int(part) for part in topology.split("+"))
                for label, checkout, collections in trees:
                    print("measuring %s: %d servers + %d agents ..." % (label, servers, agents), flush=True)
                    tree_env = dict(env, ANSIBLE_COLLECTIONS_PATH=collections)
                    by_label.setdefault(label, []).append(measure(servers, agents, workdir, tree_env, checkout, label))
        finally:
            if args.baseline:
                run(["git", "-C", ROOT, "worktree", "remove", "--force", base_checkout])
    print()
    print_results([r for results in by_label.values() for r in results])
    print_summaries(by_label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
