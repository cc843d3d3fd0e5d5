# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""renew_kubeadm on the 3-control-plane kubeadm lab of real binaries, measured in one run.

Lab up (tests/kube/kubeadm_lab.py: real kubeadm, etcd, kube-apiserver, kube-controller-manager, kube-scheduler under
the kubelet double; not timed, its memory reported per host), then `ansible-playbook playbooks/renew_kubeadm.yml -e
kubeadm_renew_force=true` timed with a callback recording every task result, then the rerun that renews nothing.
Prints the wall time, the time waiting for static pods (each restarted pod from its manifest change until its process
is new and its probe answers, as static_pod_restart measures it), the health gates, and the rest (what the collection
itself costs); the rerun's wall time; the RSS per lab host. Targets (issue "kubeadm part 1"): rest <= 25 s for 3
control-plane nodes, rerun <= 15 s.

Usage (root; from the repository root, after scripts/bootstrap.sh):
  ANSIBLE_COLLECTIONS_PATH=<dir holding ansible_collections/kubepki/certs> .venv/bin/python bench/bench_renew_kubeadm.py
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
sys.path.insert(0, os.path.join(ROOT, "tests", "kube"))

import kubeadm_lab  # noqa: E402  pylint: disable=wrong-import-position

PLAYBOOK = os.path.join(ROOT, "playbooks", "renew_kubeadm.yml")
GATE_PREFIX = "Gate - "
TARGET_REST, TARGET_RERUN = 25.0, 15.0


def timed_playbook(inventory: str, timing: str, *args: str, playbook_path: str = PLAYBOOK) -> tuple:
    env = dict(os.environ, KUBEPKI_TIMING_FILE=timing, ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "bench", "callback_plugins"),
               ANSIBLE_CALLBACKS_ENABLED="kubepki_timing", ANSIBLE_HOST_KEY_CHECKING="False",
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"))
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    started = time.monotonic()
    result = subprocess.run([playbook, "-i", inventory, playbook_path, *args], env=env, capture_output=True, text=True,
                            check=False, timeout=3600)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit("%s failed (rc %d):\n%s" % (os.path.basename(playbook_path), result.returncode,
                                             (result.stdout + result.stderr)[-3000:]))
    with open(timing, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    return wall, records


def breakdown(wall: float, records: list, gate_prefixes=(GATE_PREFIX,)) -> dict:
    """wall = static pods waited + gates (tasks whose name holds one of ``gate_prefixes``) + the rest."""
    pods = sum(r.get("pods_waited", 0.0) for r in records)
    gates = sum(r["end"] - r["start"] for r in records
                if r["start"] and any(p in r["task"] for p in gate_prefixes) and r["status"] != "skipped")
    return {"wall": wall, "static_pods": pods, "gates": gates, "rest": wall - pods - gates}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep the lab and logs here (default: a temporary directory)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-renew-kubeadm-")
    lab_dir = os.path.join(workdir, "lab")
    build_started = time.monotonic()
    bin_dir = kubeadm_lab.build_binaries()
    build_seconds = time.monotonic() - build_started
    state = kubeadm_lab.up(lab_dir, bin_dir)
    try:
        rss = kubeadm_lab.rss_per_host(state)
        first = breakdown(*timed_playbook(state["inventory"], os.path.join(workdir, "renew.jsonl"), "-e", "kubeadm_renew_force=true"))
        rerun = breakdown(*timed_playbook(state["inventory"], os.path.join(workdir, "rerun.jsonl")))
    finally:
        kubeadm_lab.kubepki_lab.down(lab_dir, log=lambda _msg: None)
    print("kubeadm lab: %s (binaries %s: %.1f s; a cold build is timed by tests/kube/build.sh itself)"
          % (state["kubeadm"]["version"], bin_dir, build_seconds))
    print("lab up %.1f s; RSS MiB per host: %s" % (state["timings"]["kubeadm_up_seconds"], json.dumps(rss)))
    print("%-22s %8s %14s %8s %8s" % ("run", "wall s", "static pods s", "gates s", "rest s"))
    for label, row in (("renew (force), 3 cp", first), ("rerun (nothing due)", rerun)):
        print("%-22s %8.1f %14.1f %8.1f %8.1f" % (label, row["wall"], row["static_pods"], row["gates"], row["rest"]))
    print("targets: rest %.1f s <= %.0f s: %s; rerun %.1f s <= %.0f s: %s"
          % (first["rest"], TARGET_REST, "met" if first["rest"] <= TARGET_REST else "NOT met",
             rerun["wall"], TARGET_RERUN, "met" if rerun["wall"] <= TARGET_RERUN else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
