# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: run_summary
type: aggregate
short_description: Ends every run with a summary per node, and shows progress during long waits
version_added: 0.5.0
author:
  - kubepki.certs developers (@kubepki)
description:
  - At the end of a playbook run, also a failed one, prints one line per node saying what happened to it (restarts
    done and how long each took to pass its gate, the tasks that changed something, the kubeadm CA rotation phases
    done and left, its backups), the CAs whose fingerprint changed (old -> new), what is left to do (nodes a play did
    not reach, plays not run after a failure) and where the backups are.
  - While a task runs longer than O(progress_interval) seconds (a health gate, a static pod coming back), prints
    every O(progress_interval) seconds a line naming the play (its name carries the phase), the task, the nodes still
    running it and the seconds waited.
  - Reads only results the collection's modules return; a result hidden by C(no_log) counts as changed or not,
    nothing more.
  - Enable it with C(callbacks_enabled = kubepki.certs.run_summary) in C(ansible.cfg) (this repository's does), or
    C(ANSIBLE_CALLBACKS_ENABLED). It works beside any stdout callback, AWX's included.
requirements:
  - Enabled in the configuration (see above).
options:
  progress_interval:
    description: Seconds a task may run before a progress line is printed, and between two progress lines; 0 prints none.
    type: int
    default: 20
    env:
      - name: KUBEPKI_PROGRESS_INTERVAL
    ini:
      - section: callback_kubepki_run_summary
        key: progress_interval
"""

import os
import threading
import time

from ansible import context
from ansible.plugins.callback import CallbackBase

from ansible_collections.kubepki.certs.plugins.plugin_utils._run_summary import (
    RunRecord,
    add_once as _add_once,
    note_result,
    summary_lines,
    waiting_line,
)


def _result_of(result) -> dict:
    """The (already censored) result dict of a callback's task result, across ansible-core versions."""
    data = getattr(result, "result", None)
    if not isinstance(data, dict):
        data = getattr(result, "_result", {})
    if data.get("_ansible_no_log"):
        return {"changed": data.get("changed", False), "censored": True}
    return data


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kubepki.certs.run_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._run = RunRecord()
        self._title = "run"
        self._started = time.monotonic()
        self._check_mode = False
        self._play = ""
        self._targets = {}  # play -> hosts it targets
        self._reached = {}  # play -> hosts that got a result in it
        self._task = ""
        self._running = {}  # host -> monotonic start of its current task
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = None

    # --- run and plays ---
    def v2_playbook_on_start(self, playbook):
        self._title = os.path.basename(getattr(playbook, "_file_name", "") or "run")
        self._started = time.monotonic()
        self._run.plays_planned = [play.get_name() for play in playbook.get_plays()]
        self._check_mode = bool(context.CLIARGS.get("check", False))

    def v2_playbook_on_play_start(self, play):
        # called once per batch of a serial play: what a play reached adds up over its batches
        self._play = play.get_name()
        _add_once(self._run.plays_started, self._play)
        try:  # the hosts the play targets, to say which it did not reach; private API, hence guarded
            inventory = play.get_variable_manager()._inventory
            # the inventory is restricted to the batch now; the play's hosts are all of them
            targets = [host.name for host in inventory.get_hosts(play.hosts, ignore_restrictions=True)]
        except Exception:  # pylint: disable=broad-except
            targets = []
        self._targets.setdefault(self._play, [])
        for host in targets:
            _add_once(self._targets[self._play], host)
            _add_once(self._run.host_order, host)
        self._reached.setdefault(self._play, set())

    # --- tasks ---
    def v2_playbook_on_task_start(self, task, is_conditional):
        with self._lock:
            self._task = task.get_name()
            self._running = {}
        self._start_ticker()

    def v2_runner_on_start(self, host, task):
        with self._lock:
            self._running[host.get_name()] = time.monotonic()

    def _note(self, result, status):
        host = result._host.get_name()
        with self._lock:
            started = self._running.pop(host, None)
        seconds = time.monotonic() - started if started else 0.0
        data = _result_of(result)
        action = getattr(result._task, "action", "") or ""
        self._reached.setdefault(self._play, set()).add(host)
        name = result._task.name or result._task.get_name()  # the task's own name, without its role's
        note_result(self._run, host, name, action, data, seconds=seconds, status=status,
                    check_mode=self._check_mode)

    def v2_runner_on_ok(self, result):
        self._note(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._note(result, "ok" if ignore_errors else "failed")

    def v2_runner_on_unreachable(self, result):
        self._note(result, "unreachable")

    def v2_runner_on_skipped(self, result):
        self._note(result, "skipped")

    # --- progress during long waits ---
    def _interval(self) -> int:
        try:
            return int(self.get_option("progress_interval"))
        except (KeyError, TypeError, ValueError):
            return 20

    def _start_ticker(self):
        if self._ticker is not None or self._interval() <= 0:
            return
        self._ticker = threading.Thread(target=self._tick, name="kubepki-progress", daemon=True)
        self._ticker.start()

    def _tick(self):
        interval = self._interval()
        while not self._stop.wait(interval):
            now = time.monotonic()
            with self._lock:
                waiting = {host: now - start for host, start in self._running.items() if now - start >= interval}
                play, task = self._play, self._task
            if waiting:
                self._display.display(waiting_line(play, task, list(waiting), max(waiting.values())))

    # --- the end ---
    def v2_playbook_on_stats(self, stats):
        self._stop.set()
        self._run.not_reached = {play: [h for h in hosts if h not in self._reached.get(play, ())]
                                 for play, hosts in self._targets.items()}
        lines = summary_lines(self._run, title="kubepki.certs summary of %s" % self._title,
                              seconds=time.monotonic() - self._started, check_mode=self._check_mode)
        self._display.banner("KUBEPKI.CERTS RUN SUMMARY")
        for line in lines:
            self._display.display(line)
