# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The health gate of a rolling restart as steps: one attempt of every asked check, and the polling around it.

Shared by the modules health_gate (a gate alone) and restart_node (restart, gate and leaf check in one call).
Commands, the HTTPS fetch, the clock and the sleep are passed in, so the module edge decides how they run and the units need no
node. The judging of what kubectl printed and what /cacerts served lives in health.py.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ansible_collections.kubepki.certs.plugins.module_utils._pki.health import (
    cacerts_problem,
    nodes_problems,
    readyz_problem,
)


@dataclass(frozen=True)
class GateChecks:
    """What a gate asks: readyz, the named nodes Ready, the bundle served on cacerts_url (verified with ca_file)."""

    readyz: bool
    ready_nodes: tuple = ()
    cacerts_url: str | None = None
    cacerts_ca_file: str = ""
    expected_cacerts_sha256: str | None = None
    fetch_timeout: float = 10.0

    @property
    def needs_kubectl(self) -> bool:
        return bool(self.readyz or self.ready_nodes)

    @property
    def empty(self) -> bool:
        return not (self.needs_kubectl or self.cacerts_url)


@dataclass(frozen=True)
class PollResult:
    ok: bool
    attempts: int
    elapsed: float
    problems: list

    def as_dict(self) -> dict:
        return {"attempts": self.attempts, "elapsed": self.elapsed, "problems": list(self.problems)}


def gate_problems(checks: GateChecks, *, kubectl: list | None, run, fetch) -> list:
    """One attempt of every asked check; ``run(argv) -> (rc, out, err)``, ``fetch(url, ca_file, timeout=) ->
    (body, error)`` (module_edge.fetch_cacerts on a node). Empty list = the gate passes."""
    problems = []
    if checks.needs_kubectl:
        if not kubectl:
            return ["kubectl: not found"]
        if not os.path.exists(kubectl[0]):
            # RKE2 re-stages <data-dir>/bin at start: a missing kubectl right after a restart is worth a retry
            return ["kubectl: %s does not exist (yet)" % kubectl[0]]
    if checks.readyz:
        problem = readyz_problem(*run(list(kubectl) + ["get", "--raw", "/readyz"]))
        if problem:
            problems.append(problem)
    if checks.ready_nodes:
        rc, out, err = run(list(kubectl) + ["get", "nodes", "-o", "json"])
        problems.extend(nodes_problems(rc, out, err, list(checks.ready_nodes)))
    if checks.cacerts_url:
        body, error = fetch(checks.cacerts_url, checks.cacerts_ca_file, timeout=checks.fetch_timeout)
        problem = cacerts_problem(body, error, checks.expected_cacerts_sha256)
        if problem:
            problems.append(problem)
    return problems


def poll(attempt, *, timeout: float, interval: float, clock=time.monotonic, sleep=time.sleep) -> PollResult:
    """Call ``attempt() -> problems`` until it returns none or the next try would start after ``timeout`` s."""
    started = clock()
    deadline = started + max(0.0, timeout)
    attempts = 0
    while True:
        attempts += 1
        problems = attempt()
        elapsed = round(clock() - started, 1)
        if not problems:
            return PollResult(True, attempts, elapsed, [])
        if clock() + interval > deadline:
            return PollResult(False, attempts, elapsed, list(problems))
        sleep(interval)
