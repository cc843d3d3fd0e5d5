# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet_expiry
short_description: One certificate expiry report for a fleet, from the cert_check result of every host
version_added: 0.2.0
author:
  - kubepki.certs developers (@kubepki)
description:
  - Takes the M(kubepki.certs.cert_check) results of every host (a dict host name -> result) and returns the fleet
    report the C(kubepki.certs.check_expiration) role writes, and the lines it prints.
  - The report holds every entry of every host with a C(host) field, sorted like C(cert_check) sorts one host
    (C(MISSING) first, then C(INVALID), then by days left ascending; ties by host and path without case, then by
    kubeconfig entry), the counts per status, and per host its counts, total, soonest expiry and threshold failures.
  - A host whose result holds no entries (for example an empty dict for a host that did not run the check) adds
    nothing to the report but counts in the first summary line.
options:
  _input:
    description: Host name -> C(cert_check) result.
    type: dict
    required: true
  warn_days:
    description: The warning window the results were computed with; copied into the report.
    type: int
    required: true
  fail_days:
    description: The failure threshold the results were computed with; copied into the report.
    type: int
    required: true
  show_soonest:
    description: How many of the soonest expiries the summary lines list.
    type: int
    default: 5
"""

EXAMPLES = r"""
- name: Build the fleet report once
  ansible.builtin.set_fact:
    fleet: >-
      {{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars)
              | map(attribute='expiry', default={})))
         | kubepki.certs.fleet_expiry(warn_days=30, fail_days=7) }}
  run_once: true

- name: Print the counts per status and the soonest expiries
  ansible.builtin.debug:
    msg: "{{ fleet.summary_lines }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: The fleet report and the printable summary.
  type: dict
  contains:
    report:
      description: What the C(check_expiration) role writes to C(fleet-expiry.json).
      type: dict
      contains:
        warn_days:
          description: O(warn_days).
          type: int
        fail_days:
          description: O(fail_days).
          type: int
        counts:
          description: Entries per status, every status listed (C(MISSING), C(INVALID), C(EXPIRED), C(NOT_YET_VALID),
            C(WARNING), C(OK)).
          type: dict
        total:
          description: Number of entries over all hosts.
          type: int
        hosts:
          description: Host name -> C(counts), C(total), C(soonest) and C(threshold_failures) of that host's result.
          type: dict
        certificates:
          description: Every entry of every host (the fields of RV(kubepki.certs.cert_check#module:certificates)
            plus C(host)), sorted.
          type: list
          elements: dict
    summary_lines:
      description:
        - 'First a line with the number of entries and hosts and the counts per status, then one line per soonest
          expiry: C(<host> <path>[#<kubeconfig entry>]: <status>, <days> days left, not after <date>).'
      type: list
      elements: str
"""


from ansible.errors import AnsibleFilterError

from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report import (
    fleet_report,
    fleet_summary_lines,
)


def fleet_expiry(results, warn_days, fail_days, show_soonest=5):
    if not isinstance(results, dict) or not all(isinstance(result, dict) for result in results.values()):
        raise AnsibleFilterError("fleet_expiry: input must be a dict host -> cert_check result")
    report = fleet_report(dict(results), warn_days=int(warn_days), fail_days=int(fail_days))
    return {"report": report,
            "summary_lines": fleet_summary_lines(report, host_count=len(results), soonest=int(show_soonest))}


class FilterModule:
    def filters(self):
        return {"fleet_expiry": fleet_expiry}
