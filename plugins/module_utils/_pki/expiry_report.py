# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The expiry report's vocabulary and arithmetic: statuses, order, summary, threshold failures, and the
fleet report (every host's entries in one list).

Pure functions on the plain entries :mod:`expiry_examination` builds (and ``cert_check`` returns), so the
``fleet_expiry`` filter runs them on the controller without any crypto library.
"""

from __future__ import annotations

import datetime

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import iso8601

STATUS_OK = "OK"
STATUS_WARNING = "WARNING"
STATUS_EXPIRED = "EXPIRED"
STATUS_NOT_YET_VALID = "NOT_YET_VALID"
STATUS_MISSING = "MISSING"
STATUS_INVALID = "INVALID"
STATUSES = (STATUS_MISSING, STATUS_INVALID, STATUS_EXPIRED, STATUS_NOT_YET_VALID, STATUS_WARNING, STATUS_OK)
# Statuses that fail a threshold check whatever the days left.
FAILING_STATUSES = (STATUS_EXPIRED, STATUS_NOT_YET_VALID, STATUS_INVALID)


def sort_key(entry: dict) -> tuple:
    """MISSING first, then INVALID, then by days left ascending; ties by path and kubeconfig entry."""
    rank = {STATUS_MISSING: 0, STATUS_INVALID: 1}.get(entry["status"], 2)
    left = entry.get("days_left")
    return (rank, left if left is not None else 0, entry["path"], entry.get("kubeconfig_entry") or "")


def sort_entries(entries: list) -> list:
    return sorted(entries, key=sort_key)


def summarize(entries: list, *, warn_days: int | None = None, now: datetime.datetime | None = None) -> dict:
    """Counts per status and the soonest expiry among the entries that have a notAfter."""
    counts = dict((status, 0) for status in STATUSES)
    for entry in entries:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    dated = [entry for entry in entries if entry.get("days_left") is not None]
    soonest = None
    if dated:
        first = min(dated, key=lambda e: (e["days_left"], e["not_after"], e["path"]))
        soonest = dict((name, first.get(name)) for name in
                       ("path", "kubeconfig_entry", "subject", "not_after", "days_left", "status"))
    summary = {"total": len(entries), "counts": counts, "soonest": soonest}
    if warn_days is not None:
        summary["warn_days"] = warn_days
    if now is not None:
        summary["checked_at"] = iso8601(now)
    return summary


def threshold_failures(entries: list, *, fail_days: int) -> list:
    """Entries that fail a threshold check: EXPIRED, NOT_YET_VALID, INVALID, or fewer than ``fail_days`` left."""
    failing = []
    for entry in entries:
        left = entry.get("days_left")
        if entry["status"] in FAILING_STATUSES or (left is not None and left < fail_days):
            failing.append(entry)
    return failing


def unchained_leaves(entries: list) -> list:
    """Leaf certificates (not CAs, not self-signed) that no CA examined on the node issued."""
    return [entry for entry in entries
            if entry.get("is_ca") is False and entry.get("signed_by") is None and entry["status"] != STATUS_INVALID
            and entry["status"] != STATUS_MISSING]


def entry_label(entry: dict) -> str:
    """``<path>`` or ``<path>#<kubeconfig entry>``: how messages name an entry."""
    if entry.get("kubeconfig_entry"):
        return "%s#%s" % (entry["path"], entry["kubeconfig_entry"])
    return entry["path"]


def describe_failures(failing: list, *, fail_days: int) -> str:
    """One message naming every failing file, for fail_json and roles."""
    parts = []
    for entry in failing:
        name = entry_label(entry)
        if entry["status"] == STATUS_INVALID:
            parts.append("%s: INVALID (%s)" % (name, entry.get("reason")))
        else:
            parts.append("%s: %s, %s days left" % (name, entry["status"], entry.get("days_left")))
    return "%d certificate%s expired, invalid, not yet valid or with fewer than %d days left: %s" % (
        len(failing), "" if len(failing) == 1 else "s", fail_days, "; ".join(parts))


# ---------------------------------------------------------------------------------------------------------------
# The fleet report: every host's entries in one list (the check_expiration role, through the fleet_expiry filter)
# ---------------------------------------------------------------------------------------------------------------

def fleet_sort_key(entry: dict) -> tuple:
    """:func:`sort_key` across hosts: MISSING, then INVALID, then by days left; ties by host and path compared
    without case (as the fleet report has always been sorted), then as :func:`sort_key` orders one host."""
    rank, left, path, kubeconfig_entry = sort_key(entry)
    return (rank, left, entry["host"].lower(), path.lower(), entry["host"], path, kubeconfig_entry)


def fleet_report(results: dict, *, warn_days: int, fail_days: int, clusters: dict | None = None) -> dict:
    """One report from ``{host: cert_check result}``: every entry with a ``host`` field, sorted by
    :func:`fleet_sort_key`, counts per status, and per host its counts, soonest expiry and threshold failures.

    A host whose result holds no entries (it did not run the check) adds nothing. With ``clusters`` (host -> cluster
    name) every host also names its ``cluster`` ("" for a host not in it).
    """
    rows, hosts = [], {}
    for host, result in results.items():
        rows.extend(dict(entry, host=host) for entry in result.get("certificates") or ())
        summary = result.get("summary")
        if summary is not None:
            hosts[host] = {"counts": summary["counts"], "total": summary["total"], "soonest": summary["soonest"],
                           "threshold_failures": result.get("threshold_failures", [])}
            if clusters is not None:
                hosts[host]["cluster"] = str(clusters.get(host) or "")
    return {
        "warn_days": warn_days,
        "fail_days": fail_days,
        "counts": summarize(rows)["counts"],
        "total": len(rows),
        "hosts": hosts,
        "certificates": sorted(rows, key=fleet_sort_key),
    }


def fleet_summary_lines(report: dict, *, host_count: int, soonest: int) -> list:
    """Printable lines: the counts per status, then the ``soonest`` entries that expire first."""
    counts = ", ".join("%s=%d" % (status, count) for status, count in report["counts"].items())
    lines = ["%d certificate(s) on %d host(s): %s" % (report["total"], host_count, counts)]
    dated = [entry for entry in report["certificates"] if entry.get("days_left") is not None]
    for entry in dated[:soonest]:
        lines.append("%s %s: %s, %d days left, not after %s"
                     % (entry["host"], entry_label(entry), entry["status"], entry["days_left"], entry["not_after"]))
    return lines
