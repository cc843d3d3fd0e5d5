# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Ansible diffs, shaped in one place for every module that changes files.

A module in diff mode returns ``diff`` as Ansible expects it: a dict, or a list of dicts (one per file), with
``before_header``, ``after_header``, ``before`` and ``after``. The texts here are summaries, one line per file
or per changed value (``<subject>: <state>``), never file content: most files this collection writes hold keys
or tokens.

Each plan's engine module turns its plan into a diff with these functions (ca_set/rotation/service_keys/token_plan
``plan_diff``, backups ``backup_diff``/``restore_diff``, node_restart ``RestartPlan.diff``); modules only pass it on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

ABSENT = "absent"
PRESENT = "present"
CREATED = "created"
UPDATED = "updated"
UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Change:
    """One line of a diff: what changes (a path, or ``line N: key`` of a file), its state before and after."""

    subject: str
    before: str
    after: str


def summary_diff(header: str, changes: Iterable[Change]) -> dict:
    """One Ansible diff entry for ``header`` (a file or a directory): ``subject: before`` lines against
    ``subject: after`` lines, in the order given."""
    changes = list(changes)
    return {
        "before_header": header,
        "after_header": header,
        "before": "".join("%s: %s\n" % (change.subject, change.before) for change in changes),
        "after": "".join("%s: %s\n" % (change.subject, change.after) for change in changes),
    }


def file_states_diff(header: str, files: Iterable[tuple]) -> dict:
    """The diff of a plan that already knows each file's fate: ``(path, state)`` pairs, state one of
    ``created``/``updated``/``unchanged``. Unchanged files are left out; a created file was absent before."""
    return summary_diff(header, (Change(path, ABSENT if state == CREATED else PRESENT, state)
                                 for path, state in files if state != UNCHANGED))


def pending_writes_diff(header: str, paths: Iterable[str], *, detail: dict | None = None) -> dict:
    """The diff of files about to be written, judged by what is on disk now, so call it before writing: a missing
    file is ``created``, an existing one ``updated``. ``detail`` maps a path to a note added to its after state
    (a key fingerprint, where a copy comes from)."""
    detail = detail or {}
    changes = []
    for path in paths:
        exists = os.path.lexists(path)
        after = UPDATED if exists else CREATED
        if detail.get(path):
            after = "%s (%s)" % (after, detail[path])
        changes.append(Change(path, PRESENT if exists else ABSENT, after))
    return summary_diff(header, changes)


def steps_diff(header: str, steps: Iterable[str]) -> dict:
    """The diff of a change made by actions rather than by file content (a service restart): nothing before,
    the steps in order after."""
    return {"before_header": header, "after_header": header, "before": "",
            "after": "".join("%s\n" % step for step in steps)}
