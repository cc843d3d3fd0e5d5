# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Units of the controller-side preflight verdict and plan over every node's node_info result."""

from __future__ import annotations

import copy

from ansible_collections.kubepki.certs.plugins.module_utils._pki import preflight

FINGERPRINTS = {
    "server-ca": "aa" * 32,
    "client-ca": "bb" * 32,
    "request-header-ca": "cc" * 32,
    "etcd-server-ca": "dd" * 32,
    "etcd-peer-ca": "ee" * 32,
}
SERVERS = ["s1", "s2", "s3"]
AGENTS = ["a1", "a2"]


def server(version="v1.31.6+k3s1", **overrides):
    result = {
        "changed": False,
        "role": "server",
        "service": "k3s",
        "version": version,
        "version_ok": True,
        "ca_fingerprints": dict(FINGERPRINTS),
        "token_locations": [{"path": "/var/lib/rancher/k3s/server/token", "kind": "token_file", "keys": [""],
                             "problem": None},
                            {"path": "/etc/rancher/k3s/config.yaml", "kind": "config", "keys": ["token"],
                             "problem": None}],
        "healthy": True,
        "health_problem": None,
    }
    result.update(overrides)
    return result


def agent(version="v1.31.6+k3s1", **overrides):
    """A server's result, but for what an agent answers differently (no CAs, env-file token, no health asked)."""
    fields = {
        "role": "agent",
        "service": "k3s-agent",
        "ca_fingerprints": {},
        "token_locations": [{"path": "/etc/systemd/system/k3s-agent.service.env", "kind": "env",
                             "keys": ["K3S_TOKEN"], "problem": None}],
        "healthy": None,
    }
    fields.update(overrides)
    return server(version, **fields)


def fleet():
    results = {name: server() for name in SERVERS}
    results.update({name: agent() for name in AGENTS})
    return results


# --- preflight_problems -------------------------------------------------------------------------

def test_all_good_is_go():
    assert preflight.preflight_problems(fleet(), SERVERS, AGENTS, "v1.26.2") == []
    # Servers only, agents omitted.
    assert preflight.preflight_problems({n: server() for n in SERVERS}, SERVERS) == []


def test_unreachable_host_has_no_facts():
    results = fleet()
    del results["a2"]
    assert preflight.preflight_problems(results, SERVERS, AGENTS) == [
        "a2: no node facts (unreachable or node_info failed)"]


def test_failed_and_skipped_results_count_as_no_facts():
    results = fleet()
    results["s2"] = {"failed": True, "msg": "k3s not found", "role": "server"}
    results["a1"] = {"skipped": True, "changed": False, "skip_reason": "Conditional result was False"}
    results["a2"] = {"changed": False, "msg": "no role key"}
    assert preflight.preflight_problems(results, SERVERS, AGENTS) == [
        "s2: no node facts (unreachable or node_info failed)",
        "a1: no node facts (unreachable or node_info failed)",
        "a2: no node facts (unreachable or node_info failed)",
    ]
    results["a2"] = "not a dict"
    assert "a2: no node facts (unreachable or node_info failed)" in preflight.preflight_problems(
        results, SERVERS, AGENTS)


def test_version_below_gate():
    results = fleet()
    results["s3"] = server(version="v1.25.16+k3s4", version_ok=False)
    results["a1"] = agent(version="v1.24.0+k3s1", version_ok=False)
    assert preflight.preflight_problems(results, SERVERS, AGENTS, "v1.26.2") == [
        "s3: version v1.25.16+k3s4 is below the gate v1.26.2",
        "a1: version v1.24.0+k3s1 is below the gate v1.26.2",
    ]
    # version_ok None (not checked) is no problem; the gate is '?' when not given.
    results = fleet()
    results["a2"] = agent(version=None, version_ok=None)
    assert preflight.preflight_problems(results, SERVERS, AGENTS) == []
    results["a2"] = agent(version_ok=False)
    assert preflight.preflight_problems(results, SERVERS, AGENTS) == [
        "a2: version v1.31.6+k3s1 is below the gate ?"]


def test_server_group_host_that_is_an_agent():
    results = fleet()
    results["s2"] = agent()
    assert preflight.preflight_problems(results, SERVERS, AGENTS) == [
        "s2: in the servers group but has no server tls directory"]


def test_differing_ca_fingerprints_name_the_ca_and_the_reference():
    results = fleet()
    other = dict(FINGERPRINTS, **{"client-ca": "11" * 32, "etcd-peer-ca": "22" * 32})
    results["s3"] = server(ca_fingerprints=other)
    assert preflight.preflight_problems(results, SERVERS, AGENTS) == [
        "s3: CA fingerprints differ from s1's (client-ca, etcd-peer-ca); every server must hold the same CAs"]


def test_a_ca_missing_on_one_server_differs():
    results = fleet()
    partial = dict(FINGERPRINTS)
    del partial["request-header-ca"]
    results["s2"] = server(ca_fingerprints=partial)
    assert preflight.preflight_problems(results, SERVERS, AGENTS) == [
        "s2: CA fingerprints differ from s1's (request-header-ca); every server must hold the same CAs"]


def test_reference_is_the_first_server_with_facts():
    results = fleet()
    results["s1"] = agent()  # not a server: not the reference
    results["s3"] = server(ca_fingerprints=dict(FINGERPRINTS, **{"server-ca": "99" * 32}))
    assert preflight.preflight_problems(results, SERVERS, AGENTS) == [
        "s1: in the servers group but has no server tls directory",
        "s3: CA fingerprints differ from s2's (server-ca); every server must hold the same CAs",
    ]


def test_no_healthy_server_names_each_servers_problem():
    results = fleet()
    results["s1"] = server(healthy=False, health_problem="readyz: rc 1: connection refused")
    results["s2"] = server(healthy=False, health_problem="k3s not found")
    results["s3"] = server(healthy=None, health_problem=None)  # not asked
    assert preflight.preflight_problems(results, SERVERS, AGENTS) == [
        "no healthy server to stage on (readyz failed everywhere: s1: readyz: rc 1: connection refused; "
        "s2: k3s not found; s3: not asked)"]


def test_one_healthy_server_is_enough():
    results = fleet()
    results["s1"] = server(healthy=False, health_problem="readyz: rc 1")
    results["s2"] = server(healthy=False, health_problem="readyz: rc 1")
    assert preflight.preflight_problems(results, SERVERS, AGENTS) == []


def test_unreachable_server_and_no_healthy_server_are_both_reported():
    results = fleet()
    del results["s1"]
    results["s2"] = server(healthy=False, health_problem="readyz: rc 1")
    results["s3"] = server(healthy=False, health_problem="readyz: rc 1")
    assert preflight.preflight_problems(results, SERVERS, AGENTS) == [
        "s1: no node facts (unreachable or node_info failed)",
        "no healthy server to stage on (readyz failed everywhere: s2: readyz: rc 1; s3: readyz: rc 1)"]


def test_unreachable_agent_does_not_hide_unhealthy_servers():
    results = fleet()
    del results[AGENTS[0]]
    for name in SERVERS:
        results[name] = server(healthy=False, health_problem="readyz: rc 1")
    problems = preflight.preflight_problems(results, SERVERS, AGENTS)
    assert problems[0] == "%s: no node facts (unreachable or node_info failed)" % AGENTS[0]
    assert problems[1].startswith("no healthy server to stage on")


def test_input_is_not_modified():
    results = fleet()
    results["s3"] = server(ca_fingerprints={"server-ca": "00" * 32})
    before = copy.deepcopy(results)
    preflight.preflight_problems(results, SERVERS, AGENTS)
    preflight.plan_lines(results, SERVERS, AGENTS)
    assert results == before


# --- plan_lines ---------------------------------------------------------------------------------

def test_plan_lines_cross_sign_in_restart_order():
    results = fleet()
    results["s2"] = server(version="v1.30.1+k3s1", token_locations=[])
    lines = preflight.plan_lines(results, SERVERS, AGENTS, "cross_sign", "/var/lib/kubepki/backup")
    assert lines == [
        "mode cross_sign (non-disruptive: the new CAs are cross-signed or below the current root)",
        "s1: v1.31.6+k3s1 server, restart 1 of 3, one at a time; unit k3s; token locations: "
        "/var/lib/rancher/k3s/server/token, /etc/rancher/k3s/config.yaml",
        "s2: v1.30.1+k3s1 server, restart 2 of 3, one at a time; unit k3s; token locations: none",
        "s3: v1.31.6+k3s1 server, restart 3 of 3, one at a time; unit k3s; token locations: "
        "/var/lib/rancher/k3s/server/token, /etc/rancher/k3s/config.yaml",
        "a1: v1.31.6+k3s1 agent, restarted after all servers, in batches; unit k3s-agent; token locations: "
        "/etc/systemd/system/k3s-agent.service.env",
        "a2: v1.31.6+k3s1 agent, restarted after all servers, in batches; unit k3s-agent; token locations: "
        "/etc/systemd/system/k3s-agent.service.env",
        "backups: /var/lib/kubepki/backup/<rotation id> on every node, before any file changes",
    ]


def test_plan_lines_order_follows_the_groups_not_the_dict():
    results = fleet()
    lines = preflight.plan_lines(results, ["s3", "s1"], ["a2"], "renew")
    assert [line.split(":")[0] for line in lines[1:]] == ["s3", "s1", "a2"]
    assert lines[1].startswith("s3: v1.31.6+k3s1 server, restart 1 of 2, ")
    assert lines[0] == "mode renew (non-disruptive: the new CAs are cross-signed or below the current root)"
    assert not any(line.startswith("backups:") for line in lines)


def test_plan_lines_new_root_is_disruptive():
    lines = preflight.plan_lines(fleet(), SERVERS, AGENTS, "new_root")
    assert lines[0] == "mode new_root (DISRUPTIVE: loaded with --force; every client needs the new CA)"
    assert "non-disruptive" not in "\n".join(lines)


def test_plan_lines_without_facts_uses_placeholders():
    results = fleet()
    del results["a1"]
    results["s1"] = {"failed": True, "role": "server", "version": "v9", "service": "k3s"}
    lines = preflight.plan_lines(results, SERVERS, AGENTS)
    assert lines[1] == "s1: ? server, restart 1 of 3, one at a time; unit ?; token locations: none"
    assert lines[4] == "a1: ? agent, restarted after all servers, in batches; unit ?; token locations: none"


def test_plan_lines_token_location_without_path():
    results = {"s1": server(token_locations=[{"kind": "env"}, {"path": "/etc/default/k3s"}])}
    assert preflight.plan_lines(results, ["s1"])[1].endswith("token locations: ?, /etc/default/k3s")
