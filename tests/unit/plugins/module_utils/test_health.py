# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Units of the health gates: kubectl's node list, /readyz, the served CA bundle."""

from __future__ import annotations

import hashlib
import json

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import health


def node(name, status=None, reason=None, message=None, *, extra_conditions=()):
    conditions = list(extra_conditions)
    if status is not None:
        ready = {"type": "Ready", "status": status}
        if reason is not None:
            ready["reason"] = reason
        if message is not None:
            ready["message"] = message
        conditions.append(ready)
    return {"metadata": {"name": name}, "status": {"conditions": conditions}}


def nodes_json(*items) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)})


PRESSURE = {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"}

FLEET = nodes_json(
    node("s1", "True", "KubeletReady", "kubelet is posting ready status", extra_conditions=[PRESSURE]),
    node("s2", "False", "KubeletNotReady", "container runtime network not ready"),
    node("a1", "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."),
    node("a2"),
    node("a0", "True"),
)


# --- parse_nodes / ready_node_names -------------------------------------------------------------

def test_parse_nodes_each_condition():
    nodes = health.parse_nodes(FLEET)
    assert nodes == {
        "s1": (True, ""),
        "s2": (False, "Ready=False KubeletNotReady container runtime network not ready"),
        "a1": (False, "Ready=Unknown NodeStatusUnknown Kubelet stopped posting node status."),
        "a2": (False, "no Ready condition yet"),
        "a0": (True, ""),
    }


def test_parse_nodes_without_reason_and_message_strips():
    assert health.parse_nodes(nodes_json(node("x", "False"))) == {"x": (False, "Ready=False")}


def test_parse_nodes_accepts_bytes_and_parsed_object():
    assert health.parse_nodes(FLEET.encode()) == health.parse_nodes(FLEET)
    assert health.parse_nodes(json.loads(FLEET)) == health.parse_nodes(FLEET)


def test_parse_nodes_skips_items_without_name_and_status():
    text = json.dumps({"items": [{"metadata": {}}, {"status": {}}, {"metadata": {"name": "bare"}}]})
    assert health.parse_nodes(text) == {"bare": (False, "no Ready condition yet")}


def test_ready_node_names_sorted_true_only():
    assert health.ready_node_names(FLEET) == ["a0", "s1"]
    assert health.ready_node_names(FLEET.encode()) == ["a0", "s1"]


@pytest.mark.parametrize("empty", ["", "   \n", b"", b"\n"])
def test_ready_node_names_empty_input(empty):
    assert health.ready_node_names(empty) == []


def test_ready_node_names_empty_list():
    assert health.ready_node_names(nodes_json()) == []
    assert health.ready_node_names(None) == []


@pytest.mark.parametrize("text", ["{not json", "error: the server doesn't have a resource type \"nodes\"",
                                  b"\xff\xfe{"])
def test_bad_json_raises_value_error(text):
    with pytest.raises(ValueError):
        health.parse_nodes(text)
    with pytest.raises(ValueError):
        health.ready_node_names(text)


# --- readyz_problem -----------------------------------------------------------------------------

def test_readyz_ok():
    assert health.readyz_problem(0, "ok", "") is None
    assert health.readyz_problem(0, "ok\n", "warning on stderr\n") is None


def test_readyz_failure_names_rc_and_last_error_line():
    err = "E1122 12:00:00 memcache.go:265] couldn't get current server API group list\n" \
          "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?\n"
    assert health.readyz_problem(1, "", err) == (
        "readyz: rc 1: The connection to the server 127.0.0.1:6443 was refused - did you specify the right host "
        "or port?")


def test_readyz_rc0_but_not_ok_uses_stdout():
    assert health.readyz_problem(0, "[-]etcd failed: reason withheld\nreadyz check failed\n", "") == \
        "readyz: rc 0: failed checks: etcd (reason withheld)"
    assert health.readyz_problem(0, "not ready\n", "") == "readyz: rc 0: not ready"


def test_readyz_no_output_and_long_line_cut():
    assert health.readyz_problem(127, "", "") == "readyz: rc 127"
    problem = health.readyz_problem(1, "", "x" * 1000)
    assert problem == "readyz: rc 1: " + "x" * 300


# --- nodes_problems -----------------------------------------------------------------------------

def test_nodes_problems_nothing_required_is_not_asked():
    assert health.nodes_problems(1, "", "boom", []) == []


def test_nodes_problems_kubectl_failed():
    assert health.nodes_problems(1, "", "first\nUnable to connect to the server: EOF\n", ["s1"]) == [
        "nodes: kubectl get nodes failed (rc 1): Unable to connect to the server: EOF"]
    assert health.nodes_problems(2, "", "", ["s1"]) == ["nodes: kubectl get nodes failed (rc 2)"]


def test_nodes_problems_non_json():
    problems = health.nodes_problems(0, "No resources found\n", "", ["s1"])
    assert len(problems) == 1
    assert problems[0].startswith("nodes: kubectl printed no JSON (")


def test_nodes_problems_not_registered_and_not_ready_in_required_order():
    problems = health.nodes_problems(0, FLEET, "", ["s2", "s1", "gone", "a1", "a2"])
    assert problems == [
        "s2: not Ready (Ready=False KubeletNotReady container runtime network not ready)",
        "gone: not registered",
        "a1: not Ready (Ready=Unknown NodeStatusUnknown Kubelet stopped posting node status.)",
        "a2: not Ready (no Ready condition yet)",
    ]


def test_nodes_problems_all_ready():
    assert health.nodes_problems(0, FLEET, "", ["s1", "a0"]) == []


# --- cacerts_problem ----------------------------------------------------------------------------

BUNDLE = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
BUNDLE_SHA = hashlib.sha256(BUNDLE).hexdigest()


def test_cacerts_fetch_error_wins():
    assert health.cacerts_problem(None, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", BUNDLE_SHA) == \
        "cacerts: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    # Even with a body, an error is reported (and the body never appears in it).
    problem = health.cacerts_problem(BUNDLE, "timed out", None)
    assert problem == "cacerts: timed out"


def test_cacerts_match_case_insensitive():
    assert health.cacerts_problem(BUNDLE, None, BUNDLE_SHA) is None
    assert health.cacerts_problem(BUNDLE, None, BUNDLE_SHA.upper()) is None


def test_cacerts_mismatch_names_both_hashes():
    other = hashlib.sha256(b"old bundle").hexdigest()
    problem = health.cacerts_problem(BUNDLE, None, other.upper())
    assert problem == "cacerts: serves a CA bundle with sha256 %s, expected %s (still the old CAs?)" % (
        BUNDLE_SHA[:16], other[:16])


def test_cacerts_no_expected_hash_only_needs_the_fetch():
    assert health.cacerts_problem(BUNDLE, None, None) is None
    assert health.cacerts_problem(BUNDLE, None, "") is None
    assert health.cacerts_problem(b"", None, None) is None


@pytest.mark.parametrize("text", ["[1]", "5", '"x"', '{"items": ["a"]}', '{"items": 3}'])
def test_parse_nodes_refuses_json_that_is_no_node_list(text):
    with pytest.raises(ValueError):
        health.parse_nodes(text)
    assert health.nodes_problems(0, text, "", ["n1"])[0].startswith("nodes: kubectl printed no JSON")


def test_readyz_problem_names_the_failed_checks_of_a_long_body():
    checks = "".join("[+]check-%02d ok\\n" % i for i in range(24))
    err = ('Error from server (InternalError): an error on the server ("%s[-]etcd failed: reason withheld\\n'
           '[-]lab-fail-readyz failed: reason: injected\\nreadyz check failed") has prevented the request from '
           'succeeding\n' % checks)
    assert health.readyz_problem(1, "", err) == (
        "readyz: rc 1: failed checks: etcd (reason withheld), lab-fail-readyz (reason: injected)")
