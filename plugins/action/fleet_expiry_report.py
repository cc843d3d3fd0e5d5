# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The fleet_expiry_report action: builds the fleet report and writes its files on the controller, in this process.

Nothing runs on a node: one task replaces a set_fact and a copy/template per file (each of which started a Python
process through the local connection). Documentation: plugins/modules/fleet_expiry_report.py.
"""

from __future__ import annotations

import datetime
import os

from ansible.plugins.action import ActionBase

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import PKIError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report import (
    fleet_report,
    fleet_summary_lines,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report_files import (
    ARGUMENT_RULES,
    ARGUMENT_SPEC,
    diffs,
    directory_changes,
    merge_parts,
    plan_files,
    render_files,
    write_files,
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC, **ARGUMENT_RULES)
        try:
            results = self._results(args, task_vars or {})
        except ValueError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        report = fleet_report(dict(results), warn_days=args["warn_days"], fail_days=args["fail_days"],
                              clusters=self._clusters(results, args["cluster_var"], task_vars or {}))
        result.update(changed=False, counts=report["counts"], total=report["total"], files=[],
                      summary_lines=fleet_summary_lines(report, host_count=len(results), soonest=args["show_soonest"]))
        if args["return_report"]:  # a large result slows every task after it (the results queue, callbacks)
            result["report"] = report
        if not args["dest"]:
            return result
        directory = os.path.abspath(os.path.expanduser(args["dest"]))
        rendered = render_files(report, host_count=len(results), now=datetime.datetime.now(datetime.timezone.utc),
                                formats=args["formats"], results=results)
        try:
            plan = plan_files(directory, rendered)
            changed = directory_changes(directory) or any(item["changed"] for item in plan)
            if changed and not self._task.check_mode:
                write_files(directory, plan)
        except PKIError as exc:
            result.update(failed=True, msg=str(exc), path=exc.path)
            return result
        result.update(changed=changed, dest=directory,
                      files=[{"path": item["path"], "changed": item["changed"]} for item in plan])
        if self._task.diff and changed:
            result["diff"] = diffs(plan)
        return result

    @staticmethod
    def _results(args: dict, task_vars: dict) -> dict:
        """Host -> cert_check result: ``results``, or the union of the parts that the slices of a sliced run
        published (the variables named ``parts_prefix`` + an id; data, read as they were passed, not templated)."""
        if args["parts_prefix"] is None:
            results = args["results"]
        else:
            results = merge_parts(task_vars, args["parts_prefix"])
            if not results:
                raise ValueError("no variable named %s<id> was passed: run check_expiration with "
                                 "check_expiration_publish_part=true (each slice publishes one), then this merge with "
                                 "their artifacts" % args["parts_prefix"])
        if not all(isinstance(value, dict) for value in results.values()):
            raise ValueError("results must be a dict host -> cert_check result")
        return results

    @staticmethod
    def _clusters(results: dict, variable: str, task_vars: dict) -> dict:
        """Host -> the value of the inventory variable ``variable`` of every host of the report the inventory knows."""
        hostvars = task_vars.get("hostvars") or {}
        return {host: str(hostvars[host].get(variable) or "") for host in results if host in hostvars}
