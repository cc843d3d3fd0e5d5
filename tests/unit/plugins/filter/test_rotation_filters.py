# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The filter plugins are thin wrappers over module_utils: registered names, arguments, input errors."""

from __future__ import annotations

import json

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.kubepki.certs.plugins.filter import nodes, rotation_plan, rotation_preflight


def node_result(role="server", **overrides):
    result = {"role": role, "service": "k3s" if role == "server" else "k3s-agent", "version": "v1.31.6+k3s1",
              "version_ok": True, "ca_fingerprints": {"server-ca": "aa" * 32} if role == "server" else {},
              "token_locations": [{"path": "/etc/rancher/k3s/config.yaml", "kind": "config", "keys": ["token"],
                                   "problem": None}],
              "healthy": True if role == "server" else None, "health_problem": None}
    result.update(overrides)
    return result


# --- rotation_preflight -------------------------------------------------------------------------

def test_rotation_preflight_registered_and_passes_arguments():
    registered = rotation_preflight.FilterModule().filters()
    assert list(registered) == ["rotation_preflight"]
    check = registered["rotation_preflight"]
    results = {"s1": node_result(), "s2": node_result(version="v1.25.0+k3s1", version_ok=False),
               "a1": node_result("agent")}
    assert check(results, ["s1", "s2"], ["a1"], "v1.26.2") == ["s2: version v1.25.0+k3s1 is below the gate v1.26.2"]
    # Tuples from Jinja, agents omitted or None.
    assert check(results, ("s1",)) == []
    assert check(results, ["s1"], None, None) == []
    assert check({"s1": node_result()}, ["s1"], ["a9"]) == ["a9: no node facts (unreachable or node_info failed)"]


@pytest.mark.parametrize("bad", [None, [], ["s1"], "{\"s1\": {}}", 3])
def test_rotation_preflight_non_dict_input(bad):
    check = rotation_preflight.FilterModule().filters()["rotation_preflight"]
    with pytest.raises(AnsibleFilterError, match="rotation_preflight: input must be a dict host -> node_info result"):
        check(bad, ["s1"], [])


# --- rotation_plan ------------------------------------------------------------------------------

def test_rotation_plan_registered_and_passes_arguments():
    registered = rotation_plan.FilterModule().filters()
    assert list(registered) == ["rotation_plan"]
    plan = registered["rotation_plan"]
    results = {"s1": node_result(), "a1": node_result("agent")}
    lines = plan(results, ["s1"], ["a1"], "new_root", "/var/lib/kubepki/backup")
    assert lines == [
        "mode new_root (DISRUPTIVE: loaded with --force; every client needs the new CA)",
        "s1: v1.31.6+k3s1 server, restart 1 of 1, one at a time; unit k3s; token locations: "
        "/etc/rancher/k3s/config.yaml",
        "a1: v1.31.6+k3s1 agent, restarted after all servers, in batches; unit k3s-agent; token locations: "
        "/etc/rancher/k3s/config.yaml",
        "backups: /var/lib/kubepki/backup/<rotation id> on every node, before any file changes",
    ]
    defaults = plan(results, ["s1"])
    assert defaults[0].startswith("mode cross_sign (non-disruptive")
    assert len(defaults) == 2


@pytest.mark.parametrize("bad", [None, [], "text", 1.5])
def test_rotation_plan_non_dict_input(bad):
    plan = rotation_plan.FilterModule().filters()["rotation_plan"]
    with pytest.raises(AnsibleFilterError, match="rotation_plan: input must be a dict host -> node_info result"):
        plan(bad, ["s1"])


# --- ready_nodes (plugins/filter/nodes.py) ------------------------------------------------------

NODES = {"items": [
    {"metadata": {"name": "s2"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
    {"metadata": {"name": "a1"},
     "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}},
    {"metadata": {"name": "s1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
]}


def test_ready_nodes_registered_text_parsed_and_empty():
    registered = nodes.FilterModule().filters()
    assert list(registered) == ["ready_nodes"]
    ready = registered["ready_nodes"]
    assert ready(json.dumps(NODES)) == ["s1", "s2"]
    assert ready(NODES) == ["s1", "s2"]
    assert ready("") == []
    assert ready("\n") == []


@pytest.mark.parametrize("bad", ["{", "Unable to connect to the server: EOF", b"not json"])
def test_ready_nodes_non_json_input(bad):
    ready = nodes.FilterModule().filters()["ready_nodes"]
    with pytest.raises(AnsibleFilterError, match="^ready_nodes: input is not JSON: "):
        ready(bad)
