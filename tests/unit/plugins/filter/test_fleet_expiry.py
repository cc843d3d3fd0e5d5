# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""fleet_expiry: the check_expiration role's fleet report and printed lines, from per-host cert_check results."""

from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.kubepki.certs.plugins.filter import fleet_expiry

STATUSES = ["MISSING", "INVALID", "EXPIRED", "NOT_YET_VALID", "WARNING", "OK"]


def entry(path, status, days_left=None, not_after=None, kubeconfig_entry=None):
    return {"path": path, "status": status, "days_left": days_left, "not_after": not_after,
            "kubeconfig_entry": kubeconfig_entry, "subject": "CN=%s" % path}


def result(*entries, failures=()):
    counts = dict((status, sum(1 for e in entries if e["status"] == status)) for status in STATUSES)
    dated = sorted((e for e in entries if e["days_left"] is not None), key=lambda e: e["days_left"])
    return {"certificates": list(entries), "threshold_failures": list(failures),
            "summary": {"total": len(entries), "counts": counts, "soonest": dated[0]["path"] if dated else None}}


RESULTS = {
    "h2": result(entry("/tls/a.crt", "WARNING", 2, "2031-03-03T00:00:00Z"),
                 entry("/tls/b.crt", "OK", 300, "2031-12-27T00:00:00Z"),
                 entry("/tls/gone.crt", "MISSING")),
    "h1": result(entry("/tls/z.crt", "WARNING", 2, "2031-03-03T00:00:00Z"),
                 entry("/etc/admin.conf", "WARNING", 2, "2031-03-03T00:00:00Z", kubeconfig_entry="user/b"),
                 entry("/etc/admin.conf", "WARNING", 2, "2031-03-03T00:00:00Z", kubeconfig_entry="user/a"),
                 entry("/tls/bad.crt", "INVALID"), failures=["/tls/bad.crt"]),
    "Node-B": result(entry("/tls/old.crt", "EXPIRED", -3, "2031-02-26T00:00:00Z"),
                     entry("/tls/a.crt", "WARNING", 2, "2031-03-03T00:00:00Z")),
    "unreached": {},
}


def fleet(*results, **options):
    """The filter on ``results`` (RESULTS when not given), warn 30 and fail 7 days unless given."""
    check = fleet_expiry.FilterModule().filters()["fleet_expiry"]
    options.setdefault("warn_days", 30)
    options.setdefault("fail_days", 7)
    return check(results[0] if results else RESULTS, **options)


def test_registered_name():
    assert list(fleet_expiry.FilterModule().filters()) == ["fleet_expiry"]


def test_entries_sorted_across_hosts_missing_invalid_then_days_left_ties_by_host_and_path_without_case():
    rows = fleet()["report"]["certificates"]
    assert [(row["host"], row["path"], row["kubeconfig_entry"]) for row in rows] == [
        ("h2", "/tls/gone.crt", None),
        ("h1", "/tls/bad.crt", None),
        ("Node-B", "/tls/old.crt", None),
        ("h1", "/etc/admin.conf", "user/a"),
        ("h1", "/etc/admin.conf", "user/b"),
        ("h1", "/tls/z.crt", None),
        ("h2", "/tls/a.crt", None),
        ("Node-B", "/tls/a.crt", None),   # "node-b" after "h2": host names compare without case
        ("h2", "/tls/b.crt", None),
    ]
    # Every field of the host's entry is kept; host is added.
    assert rows[0] == dict(RESULTS["h2"]["certificates"][2], host="h2")


def test_counts_totals_and_host_summaries():
    report = fleet(warn_days="45", fail_days=3)["report"]
    assert report["warn_days"] == 45 and report["fail_days"] == 3
    assert report["total"] == 9
    assert report["counts"] == {"MISSING": 1, "INVALID": 1, "EXPIRED": 1, "NOT_YET_VALID": 0, "WARNING": 5, "OK": 1}
    assert list(report["counts"]) == STATUSES
    assert sorted(report["hosts"]) == ["Node-B", "h1", "h2"]   # no result, no summary
    assert report["hosts"]["h1"] == {"counts": RESULTS["h1"]["summary"]["counts"], "total": 4,
                                     "soonest": "/tls/z.crt", "threshold_failures": ["/tls/bad.crt"]}


def test_summary_lines_count_every_host_and_list_the_soonest():
    lines = fleet(show_soonest=3)["summary_lines"]
    assert lines == [
        "9 certificate(s) on 4 host(s): MISSING=1, INVALID=1, EXPIRED=1, NOT_YET_VALID=0, WARNING=5, OK=1",
        "Node-B /tls/old.crt: EXPIRED, -3 days left, not after 2031-02-26T00:00:00Z",
        "h1 /etc/admin.conf#user/a: WARNING, 2 days left, not after 2031-03-03T00:00:00Z",
        "h1 /etc/admin.conf#user/b: WARNING, 2 days left, not after 2031-03-03T00:00:00Z",
    ]
    assert len(fleet()["summary_lines"]) == 1 + 5
    assert fleet(show_soonest=0)["summary_lines"] == lines[:1]


def test_no_hosts():
    assert fleet({}) == {
        "report": {"warn_days": 30, "fail_days": 7, "counts": dict((s, 0) for s in STATUSES), "total": 0,
                   "hosts": {}, "certificates": []},
        "summary_lines": ["0 certificate(s) on 0 host(s): MISSING=0, INVALID=0, EXPIRED=0, NOT_YET_VALID=0, "
                          "WARNING=0, OK=0"],
    }


@pytest.mark.parametrize("bad", [None, [], ["h1"], "{}", 3, {"h1": ["not", "a", "result"]}])
def test_input_must_be_a_dict_of_results(bad):
    with pytest.raises(AnsibleFilterError, match="fleet_expiry: input must be a dict host -> cert_check result"):
        fleet(bad)
