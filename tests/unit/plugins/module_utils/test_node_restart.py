# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Units of one node's restart: the plan (unit, daemon-reload, force-restart), the polling, the /cacerts URL."""

from __future__ import annotations

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.gate import GateChecks, gate_problems, poll
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.node_restart import cacerts_url, plan_restart


@pytest.mark.parametrize("distribution, role, unit", [
    ("k3s", "server", "k3s"), ("k3s", "agent", "k3s-agent"),
    ("rke2", "server", "rke2-server"), ("rke2", "agent", "rke2-agent"),
])
def test_plan_unit_per_distribution_and_role(distribution, role, unit):
    plan = plan_restart(get_layout(distribution), node_role=role, restart=True, daemon_reload=False, force_restart=False)
    assert plan.commands("/bin/systemctl") == [["/bin/systemctl", "restart", unit]]


def test_daemon_reload_comes_first_and_only_with_a_restart():
    layout = get_layout("k3s")
    plan = plan_restart(layout, node_role="agent", restart=True, daemon_reload=True, force_restart=False)
    assert plan.commands("systemctl") == [["systemctl", "daemon-reload"], ["systemctl", "restart", "k3s-agent"]]
    idle = plan_restart(layout, node_role="agent", restart=False, daemon_reload=True, force_restart=False)
    assert idle.commands("systemctl") == [] and idle.daemon_reload is False


def test_force_restart_file_only_for_rke2_servers():
    rke2 = get_layout("rke2", data_dir="/opt/rke2")
    assert plan_restart(rke2, node_role="server", restart=True, daemon_reload=False,
                        force_restart=True).force_restart_file == "/opt/rke2/force-restart"
    assert plan_restart(rke2, node_role="agent", restart=True, daemon_reload=False,
                        force_restart=True).force_restart_file is None
    assert plan_restart(get_layout("k3s"), node_role="server", restart=True, daemon_reload=False,
                        force_restart=True).force_restart_file is None


def test_diff_lists_the_steps_in_order():
    plan = plan_restart(get_layout("rke2"), node_role="server", restart=True, daemon_reload=True, force_restart=True)
    assert plan.diff("systemctl")["after"] == ("touch /var/lib/rancher/rke2/force-restart\nsystemctl daemon-reload\n"
                                               "systemctl restart rke2-server\n")


def test_unknown_role_is_refused():
    with pytest.raises(InvalidInputError):
        plan_restart(get_layout("k3s"), node_role="etcd", restart=True, daemon_reload=False, force_restart=False)


def test_cacerts_url_uses_the_supervisor_port():
    assert cacerts_url(get_layout("k3s"), "10.0.0.11") == "https://10.0.0.11:6443/cacerts"
    assert cacerts_url(get_layout("rke2"), "fd00::11") == "https://[fd00::11]:9345/cacerts"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_poll_until_no_problem():
    clock = Clock()
    answers = [["a"], ["b"], []]
    result = poll(lambda: answers.pop(0), timeout=10, interval=2, clock=clock, sleep=clock.sleep)
    assert (result.ok, result.attempts, result.elapsed, result.problems) == (True, 3, 4.0, [])


def test_poll_gives_up_with_the_last_problems():
    clock = Clock()
    result = poll(lambda: ["still %d" % clock.now], timeout=5, interval=2, clock=clock, sleep=clock.sleep)
    assert (result.ok, result.attempts, result.problems) == (False, 3, ["still 104"])
    assert poll(lambda: ["x"], timeout=0, interval=1, clock=clock, sleep=clock.sleep).attempts == 1


def test_gate_without_kubectl_is_a_problem_and_runs_nothing():
    calls = []
    problems = gate_problems(GateChecks(readyz=True), kubectl=None, run=calls.append, fetch=calls.append)
    assert problems == ["kubectl: not found"] and calls == []
    assert GateChecks(readyz=False).empty and not GateChecks(readyz=False, cacerts_url="https://x/cacerts").empty
