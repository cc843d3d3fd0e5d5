# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The merge of a sliced fleet expiry report (playbooks/check_expiration_merge.yml), measured in one run.

Makes a fleet of k3s-like nodes on disk (server/tls with a CA and the apiserver's serving certificate each, made with
OpenSSL), reads every node with the cert_check engine as the slices would, splits the results into 10 parts as AWX
job slicing splits the inventory, then times `ansible-playbook check_expiration_merge.yml -e @parts.json` (JSON,
Markdown, Prometheus and HTML reports written by the fleet_expiry_report action) against `ansible-playbook` of an
empty play on localhost: the difference is what the merge itself costs. Target (issue "Operator experience"): the merge
of 10 slices at most 2 s. Also timed: the empty play given the same parts as extra variables, i.e. what ansible-core
spends reading (and copying) the artifacts AWX passes, which no task can avoid; the remainder is the merge's tasks.

Usage (from the repository root, after scripts/bootstrap.sh):
  ANSIBLE_COLLECTIONS_PATH=<dir holding ansible_collections/kubepki/certs> PYTHONPATH=<same dir> \\
      .venv/bin/python bench/bench_expiry_merge.py [--nodes 200] [--slices 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry import check_expiration
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import get_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_SECONDS = 2.0


def make_node(directory: str, index: int) -> None:
    tls = os.path.join(directory, "server", "tls")
    os.makedirs(tls)
    ca, leaf = os.path.join(tls, "server-ca"), os.path.join(tls, "serving-kube-apiserver")
    for argv in (["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", ca + ".key", "-out", ca + ".crt", "-subj", "/CN=k3s-server-ca@%d" % (1700000000 + index),
                  "-days", "3650"],
                 ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                  leaf + ".key", "-out", leaf + ".csr", "-subj", "/CN=kube-apiserver"],
                 ["openssl", "x509", "-req", "-in", leaf + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
                  "-CAcreateserial", "-days", str(30 + index % 400), "-out", leaf + ".crt"]):
        subprocess.run(argv, check=True, capture_output=True)
    os.unlink(leaf + ".csr")


def timed(argv, env) -> float:
    started = time.monotonic()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit("%s failed:\n%s" % (" ".join(argv[:3]), (result.stdout + result.stderr)[-3000:]))
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the median is reported")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-expiry-merge-")
    try:
        now = datetime.datetime.now(datetime.timezone.utc)
        results = {}
        for index in range(args.nodes):
            host = "node-%03d" % index
            make_node(os.path.join(work, host), index)
            results[host] = check_expiration(get_layout("k3s", data_dir=os.path.join(work, host)), now=now)
        hosts = sorted(results)
        # each slice publishes its part as JSON text (roles/check_expiration/tasks/main.yml), AWX passes it on as is
        parts = {"kubepki_expiry_part_%d" % n: json.dumps({h: results[h] for h in hosts[n::args.slices]})
                 for n in range(args.slices)}
        parts_file = os.path.join(work, "parts.json")
        with open(parts_file, "w", encoding="utf-8") as handle:
            json.dump(dict(parts, check_expiration_report_dir=os.path.join(work, "report")), handle)
        empty = os.path.join(work, "empty.yml")
        with open(empty, "w", encoding="utf-8") as handle:
            handle.write("- hosts: localhost\n  gather_facts: false\n  tasks: []\n")
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="False",
                   ANSIBLE_INVENTORY_UNPARSED_WARNING="False")
        playbook = shutil.which("ansible-playbook") or "ansible-playbook"
        merge = sorted(timed([playbook, os.path.join(ROOT, "playbooks", "check_expiration_merge.yml"), "-e", "@" + parts_file],
                             env) for _run in range(args.repeat))[args.repeat // 2]
        baseline = sorted(timed([playbook, empty], env) for _run in range(args.repeat))[args.repeat // 2]
        loading = sorted(timed([playbook, empty, "-e", "@" + parts_file], env) for _run in range(args.repeat))[args.repeat // 2]
        with open(os.path.join(work, "report", "fleet-expiry.json"), encoding="utf-8") as handle:
            report = json.load(handle)
        entries = report["total"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("merge of %d slices: %d nodes, %d certificate entries (median of %d runs each)"
          % (args.slices, args.nodes, entries, args.repeat))
    print("%-44s %8.2f s" % ("ansible-playbook check_expiration_merge.yml", merge))
    print("%-44s %8.2f s" % ("ansible-playbook of an empty play (startup)", baseline))
    print("%-44s %8.2f s" % ("empty play given the parts (-e @parts.json)", loading))
    print("%-44s %8.2f s  (%.0f%% of the wall time)" % ("the merge itself (difference)", merge - baseline,
                                                        100.0 * (merge - baseline) / merge))
    print("%-44s %8.2f s" % ("  of which ansible-core reading the parts", loading - baseline))
    print("%-44s %8.2f s" % ("  of which the merge's tasks", merge - loading))
    print("target: merge itself %.2f s <= %.1f s: %s" % (merge - baseline, TARGET_SECONDS,
                                                         "met" if merge - baseline <= TARGET_SECONDS else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
