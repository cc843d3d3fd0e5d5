# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""rotate_ca_kubeadm (all three CAs, every phase) on the 3-control-plane kubeadm lab of real binaries, measured in one run.

Lab up (tests/kube/kubeadm_lab.py; not timed), then `ansible-playbook playbooks/rotate_ca_kubeadm.yml` (phase all:
stage, prepare, promote, finalize) timed with the callback that records every task result, then the rerun that changes
nothing. Prints, per run, the wall time split into the time waiting for static pods (each restarted pod from its
manifest change until its process is new and its probe answers, as static_pod_restart measures it), the waits on the
cluster (health gates, the controller-manager publishing kube-root-ca.crt) and the rest (what the collection itself
costs). Target (issue "kubeadm part 2"): rest <= 60 s.

Usage (root; from the repository root, after scripts/bootstrap.sh):
  ANSIBLE_COLLECTIONS_PATH=<dir holding ansible_collections/kubepki/certs> .venv/bin/python bench/bench_rotate_ca_kubeadm.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "kube"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import kubeadm_lab  # noqa: E402  pylint: disable=wrong-import-position
from bench_renew_kubeadm import breakdown, timed_playbook  # noqa: E402  pylint: disable=wrong-import-position

PLAYBOOK = os.path.join(ROOT, "playbooks", "rotate_ca_kubeadm.yml")
WAITS = ("Gate - ", "Wait until ")
TARGET_REST = 60.0
NO_KUBELET_UNIT = '{"kubeadm_ca_rotation_kubelet_restart_command": []}'  # the kubelet double re-reads kubelet.conf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep the lab and logs here (default: a temporary directory)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-rotate-ca-kubeadm-")
    lab_dir = os.path.join(workdir, "lab")
    state = kubeadm_lab.up(lab_dir, kubeadm_lab.build_binaries())
    try:
        first = breakdown(*timed_playbook(state["inventory"], os.path.join(workdir, "rotate.jsonl"), "-e", NO_KUBELET_UNIT,
                                          playbook_path=PLAYBOOK), gate_prefixes=WAITS)
        rerun = breakdown(*timed_playbook(state["inventory"], os.path.join(workdir, "rerun.jsonl"), "-e", NO_KUBELET_UNIT,
                                          playbook_path=PLAYBOOK), gate_prefixes=WAITS)
    finally:
        kubeadm_lab.kubepki_lab.down(lab_dir, log=lambda _msg: None)
    print("kubeadm lab %s, 3 control-plane nodes + 1 worker; CAs ca, front-proxy-ca, etcd-ca" % state["kubeadm"]["version"])
    print("%-34s %8s %14s %14s %8s" % ("run", "wall s", "static pods s", "gates+waits s", "rest s"))
    for label, row in (("rotation (stage..finalize)", first), ("rerun (everything done)", rerun)):
        print("%-34s %8.1f %14.1f %14.1f %8.1f" % (label, row["wall"], row["static_pods"], row["gates"], row["rest"]))
    print("share of the rotation's wall time: static pods %.0f%%, gates and waits %.0f%%, rest %.0f%%"
          % tuple(100.0 * first[k] / first["wall"] for k in ("static_pods", "gates", "rest")))
    print("target: rest %.1f s <= %.0f s: %s" % (first["rest"], TARGET_REST, "met" if first["rest"] <= TARGET_REST else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
