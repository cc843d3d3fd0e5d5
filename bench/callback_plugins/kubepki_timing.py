# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark-only callback: one JSON line per task result (host, task, action, start, end, status)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: kubepki_timing
type: aggregate
short_description: Record per-host task timings for the benchmarks in bench/
description:
  - Writes one JSON object per task result to the file named by E(KUBEPKI_TIMING_FILE).
requirements:
  - enabled in ANSIBLE_CALLBACKS_ENABLED
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kubepki_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._started = {}
        self._path = os.environ.get("KUBEPKI_TIMING_FILE", "timing.jsonl")

    def v2_runner_on_start(self, host, task):
        self._started[(host.get_name(), task._uuid)] = time.time()

    def _record(self, result, status):
        host = result._host.get_name()
        task = result._task
        start = self._started.pop((host, task._uuid), None)
        line = {"host": host, "task": task.get_name(), "action": task.action, "status": status,
                "start": start, "end": time.time(),
                "delegated": bool(result._result.get("_ansible_delegated_vars")),
                # the task's own delegate_to: a skipped result carries no delegated vars
                "delegate_to": bool(task.delegate_to)}
        leaves = result._result.get("leaves")
        if isinstance(leaves, dict) and isinstance(leaves.get("elapsed"), (int, float)):
            # restart_node: its closing leaf check counts as overhead, not as waiting (bench_rotate_ca.py)
            line["leaves_elapsed"] = leaves["elapsed"]
        pods = result._result.get("pods")
        if task.action.endswith("static_pod_restart") and isinstance(pods, list):
            # static_pod_restart: the seconds each restarted pod took to come back (bench_renew_kubeadm.py)
            line["pods_waited"] = sum(pod.get("waited_seconds") or 0.0 for pod in pods if isinstance(pod, dict))
        with open(self._path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")
