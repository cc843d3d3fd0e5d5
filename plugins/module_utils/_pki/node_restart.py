# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""One node of a rolling restart in one call: restart (systemd), gate, then the node's leaf check.

The plan says which commands run (the unit and the RKE2 force-restart file come from the layout table); the
gate is gate.py's; the leaf check is cert_check's engine (every leaf issued by a CA on the node, none expired),
polled briefly because a node may still be writing its certificates right after it came back. Commands, clock
and sleep are passed in by the module edge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import steps_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError, LayoutError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry import check_expiration
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report import (
    describe_failures,
    entry_label,
    threshold_failures,
    unchained_leaves,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.gate import PollResult, poll

NODE_ROLES = ("server", "agent")


@dataclass(frozen=True)
class RestartPlan:
    """What restarting this node means: the unit, and whether a daemon-reload or a force-restart file comes first."""

    unit: str
    restart: bool
    daemon_reload: bool
    force_restart_file: str | None

    def commands(self, systemctl: str) -> list:
        """The systemctl argvs, in order (none when no restart is needed: a reload alone would change nothing)."""
        if not self.restart:
            return []
        argvs = [[systemctl, "daemon-reload"]] if self.daemon_reload else []
        return argvs + [[systemctl, "restart", self.unit]]

    def diff(self, systemctl: str) -> dict:
        steps = (["touch %s" % self.force_restart_file] if self.restart and self.force_restart_file else [])
        steps += [" ".join(argv) for argv in self.commands(systemctl)]
        return steps_diff("%s (steps)" % self.unit, steps)


def plan_restart(layout, *, node_role: str, restart: bool, daemon_reload: bool, force_restart: bool) -> RestartPlan:
    """The plan for a server or an agent of ``layout``; force_restart only where the layout has such a file."""
    if node_role not in NODE_ROLES:
        raise InvalidInputError("node_role %r is none of %s" % (node_role, ", ".join(NODE_ROLES)))
    unit = layout.server_unit if node_role == "server" else layout.agent_unit
    if not unit:
        raise LayoutError("%s has no %s unit to restart" % (layout.distribution, node_role))
    force_file = layout.force_restart_file if (force_restart and node_role == "server") else None
    return RestartPlan(unit=unit, restart=restart, daemon_reload=daemon_reload and restart, force_restart_file=force_file)


def cacerts_url(layout, host: str) -> str:
    """The node's /cacerts URL on the distribution's supervisor port (k3s 6443, RKE2 9345)."""
    address = "[%s]" % host if ":" in host and not host.startswith("[") else host
    return "https://%s:%d/cacerts" % (address, layout.supervisor_port)


def leaf_problems(layout) -> tuple:
    """(problems, summary) of cert_check fail_on_unchained + fail_on_threshold with fail_days 0 on the node."""
    report = check_expiration(layout)
    failing = threshold_failures(report["certificates"], fail_days=0)
    unchained = [entry_label(entry) for entry in unchained_leaves(report["certificates"])]
    problems = []
    if failing:
        problems.append(describe_failures(failing, fail_days=0))
    if unchained:
        problems.append("leaf certificates issued by no CA on this node: %s" % ", ".join(unchained))
    summary = {"certificates": len(report["certificates"]), "unchained": unchained,
               "threshold_failures": [entry_label(entry) for entry in failing]}
    return problems, summary


def check_leaves(layout, *, timeout: float, interval: float, clock=time.monotonic, sleep=time.sleep) -> tuple:
    """Poll the leaf check (the node may still be writing its certificates); (PollResult, last summary)."""
    last = {}

    def attempt():
        problems, summary = leaf_problems(layout)
        last.update(summary)
        return problems

    result: PollResult = poll(attempt, timeout=timeout, interval=interval, clock=clock, sleep=sleep)
    return result, dict(last)
