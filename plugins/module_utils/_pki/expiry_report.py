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


def describe_failures(failing: list, *, fail_days: int) -> str:
    """One message naming every failing file, for fail_json and roles."""
    parts = []
    for entry in failing:
        name = entry["path"]
        if entry.get("kubeconfig_entry"):
            name += "#%s" % entry["kubeconfig_entry"]
        if entry["status"] == STATUS_INVALID:
            parts.append("%s: INVALID (%s)" % (name, entry.get("reason")))
        else:
            parts.append("%s: %s, %s days left" % (name, entry["status"], entry.get("days_left")))
    return "%d certificate%s expired, invalid, not yet valid or with fewer than %d days left: %s" % (
        len(failing), "" if len(failing) == 1 else "s", fail_days, "; ".join(parts))
