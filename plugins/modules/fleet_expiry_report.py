#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_expiry_report
short_description: Write the fleet certificate expiry report (JSON, Markdown, Prometheus text, HTML) on the controller
version_added: 0.4.0
description:
  - Builds one report from the M(kubepki.certs.cert_check) result of every host (as P(kubepki.certs.fleet_expiry#filter)
    does) and writes it into O(dest) on the controller as C(fleet-expiry.json), C(fleet-expiry.md),
    C(fleet-expiry.prom) (Prometheus text in x509-certificate-exporter's names, see
    P(kubepki.certs.x509_textfile#filter)) and C(fleet-expiry.html) (one self-contained page with the counts per status, a
    summary per cluster and CA, a timeline of the expiry dates and a table of every certificate that sorts by a
    click on a column header, and no external asset).
  - An action that runs on the controller only; the task's host and connection are not used.
  - Each file is compared with the one on disk and written only when its content or mode differs, so the task
    reports C(changed) only when the report changed.
  - No file embeds the time of the run (idempotence over freshness), so an unchanged fleet gives unchanged files.
    The days left and C(x509_cert_expired) are computed when the certificates are checked, so the files change when
    a day passes; the file's modification time tells when the report last changed. The HTML page draws the
    current day on its timeline when it is opened.
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
  - kubepki.certs._file_writes
attributes:
  check_mode:
    details:
      - In check mode the report is built and compared with the files on disk, nothing is written.
  diff_mode:
    details:
      - The before and after text of every file that changes; a file larger than 100 KiB is named, not shown.
  action:
    support: full
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on
      the controller.
  platform:
    support: full
    platforms: posix
    description: The controller.
options:
  results:
    description:
      - Host name -> M(kubepki.certs.cert_check) result. A host whose result holds no entries (for example an empty
        dict for a host that did not run the check) adds nothing but counts as a host.
      - Exactly one of O(results) and O(parts_prefix) is required.
    type: dict
  parts_prefix:
    description:
      - Instead of O(results), the union of the parts the slices of a sliced run published (AWX job slicing). Every
        variable named this prefix followed by an id holds host name -> C(cert_check) result, as its JSON text (what
        the role's slices publish) or as a dict. The parts are read as data, not templated.
      - The task fails, naming the prefix, when no such variable exists.
    type: str
  warn_days:
    description: The warning window the results were computed with; copied into the report.
    type: int
    required: true
  fail_days:
    description: The failure threshold the results were computed with; copied into the report.
    type: int
    required: true
  show_soonest:
    description: How many of the soonest expiries RV(summary_lines) lists.
    type: int
    default: 5
  cluster_var:
    description:
      - The inventory variable that names a host's cluster. The report names each host's C(cluster) (empty for a
        host without it or unknown to the inventory), and the HTML page summarizes per cluster and CA.
    type: str
    default: kubepki_cluster_name
  return_report:
    description:
      - Return the whole report as RV(report). Off by default, as the report (every certificate of every host) makes
        a large result, which Ansible passes through its result queue and every callback; the same content is in
        C(fleet-expiry.json).
    type: bool
    default: false
  dest:
    description:
      - Directory on the controller for the report files, created with mode C(0755) when missing; the files get mode
        C(0644). C(~) is expanded.
      - Omitted, nothing is written and the task only returns the report.
    type: path
  formats:
    description:
      - Which files to write, C(fleet-expiry.<format>) each.
      - V(kubeadm-json) writes C(kubeadm/<host>.json) for every host whose result carries
        RV(kubepki.certs.cert_check#module:kubeadm_expiration_info), that is kubeadm nodes checked with
        O(kubepki.certs.cert_check#module:kubeadm_output=true). Each file is kubeadm's C(CertificateExpirationInfo) as
        C(kubeadm certs check-expiration -o json) prints it.
    type: list
    elements: str
    choices: [json, md, prom, html, kubeadm-json]
    default: [json, md, prom, html]
seealso:
  - module: kubepki.certs.cert_check
  - plugin: kubepki.certs.fleet_expiry
    plugin_type: filter
  - plugin: kubepki.certs.x509_textfile
    plugin_type: filter
  - ref: ansible_collections.kubepki.certs.docsite.guide_op_expiry_report
    description: The expiry report operation (the kubepki.certs.check_expiration role).
"""

EXAMPLES = r"""
- name: Check every node
  kubepki.certs.cert_check:
    distribution: k3s
  register: expiry

- name: Write the fleet report once, on the controller
  kubepki.certs.fleet_expiry_report:
    results: "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars)
                 | map(attribute='expiry', default={}))) }}"
    warn_days: 30
    fail_days: 7
    dest: ~/kubepki-reports
  run_once: true
  register: fleet

- name: Print the counts per status and the soonest expiries
  ansible.builtin.debug:
    msg: "{{ fleet.summary_lines }}"
  run_once: true
"""

RETURN = r"""
report:
  description: The report written to C(fleet-expiry.json); its fields as P(kubepki.certs.fleet_expiry#filter) returns
    them, and each host's C(cluster) (see O(cluster_var)).
  returned: when O(return_report=true)
  type: dict
counts:
  description: Entries per status, every status listed.
  returned: always
  type: dict
  sample: {"MISSING": 0, "INVALID": 0, "EXPIRED": 0, "NOT_YET_VALID": 0, "WARNING": 1, "OK": 25}
total:
  description: Number of entries over all hosts.
  returned: always
  type: int
summary_lines:
  description:
    - 'First a line with the number of entries and hosts and the counts per status, then one line per soonest
      expiry: C(<host> <path>[#<kubeconfig entry>]: <status>, <days> days left, not after <date>).'
  returned: always
  type: list
  elements: str
dest:
  description: The report directory, absolute.
  returned: when O(dest) is set
  type: str
  sample: /home/ops/kubepki-reports
files:
  description: Every report file and whether it was (or in check mode would be) written.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The file.
      type: str
      sample: /home/ops/kubepki-reports/fleet-expiry.html
    changed:
      description: Its content or mode differed.
      type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report_files import ARGUMENT_SPEC


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(msg="fleet_expiry_report runs on the controller through its action plugin; "
                         "it cannot run as a module on a node")


if __name__ == "__main__":
    main()
