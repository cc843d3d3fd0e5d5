# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: x509_textfile
short_description: A certificate expiry report as a Prometheus textfile in x509-certificate-exporter's names
version_added: 0.4.0
author:
  - kubepki.certs developers (@kubepki)
description:
  - Turns a M(kubepki.certs.cert_check) result (or the fleet report of P(kubepki.certs.fleet_expiry#filter)) into the
    Prometheus text format that node_exporter's textfile collector reads, in the metric and label names of
    enix/x509-certificate-exporter (C(x509_cert_not_before), C(x509_cert_not_after), C(x509_cert_expired),
    C(x509_cert_error); C(filepath), C(embedded_kind), C(embedded_key), C(subject_CN), C(issuer_CN),
    C(serial_number)), so its dashboards and alert rules apply.
  - That exporter reads the first certificate of a file only. Here the C(x509_cert_*) series describe that
    certificate too, the one in use (served by a leaf file, signing in a CA file), and every certificate of the file,
    the first included, is also reported as C(kubepki_x509_bundle_cert_not_before) and
    C(kubepki_x509_bundle_cert_not_after) with the same labels and C(bundle_position) (1 for the first). An old CA
    kept in a bundle during a rotation is so visible without raising the exporter's expiry alerts.
  - No series but C(x509_cert_expired) depends on the clock, so the same certificates give the same text.
  - A fleet report's entries carry their host in the label C(hostname).
options:
  _input:
    description: A C(cert_check) result or a fleet report (a dict with C(certificates)), or the list of entries.
    type: raw
    required: true
  now:
    description: The moment C(x509_cert_expired) is computed for, as a datetime
      (Jinja's C(now(utc=true))) or ISO 8601 UTC text; default the current time.
    type: raw
  host:
    description: A C(hostname) label for every series (a node's own report).
    type: str
"""

EXAMPLES = r"""
- name: Write this node's textfile for node_exporter (atomically, as copy does)
  ansible.builtin.copy:
    content: "{{ expiry | kubepki.certs.x509_textfile(now=now(utc=true)) }}"
    dest: /var/lib/node_exporter/textfile_collector/kubepki_certs.prom
    mode: "0644"
"""

RETURN = r"""
_value:
  description: The textfile, HELP and TYPE lines first for each metric, one line per series.
  type: str
"""

import datetime

from ansible.errors import AnsibleFilterError

from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_metrics import textfile


def _moment(now) -> datetime.datetime:
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    if isinstance(now, datetime.datetime):
        return now if now.tzinfo else now.replace(tzinfo=datetime.timezone.utc)
    try:
        return datetime.datetime.strptime(str(now), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise AnsibleFilterError("x509_textfile: now must be a datetime or ISO 8601 UTC text like 2026-12-04T05:00:00Z, "
                                 "not %r" % (now,)) from None


def x509_textfile(report, now=None, host=None):
    entries = report.get("certificates") if isinstance(report, dict) else report
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "path" in e and "status" in e for e in entries):
        raise AnsibleFilterError("x509_textfile: input must be a cert_check result, a fleet report or their certificates")
    return textfile(entries, now=_moment(now), host=host)


class FilterModule:
    def filters(self):
        return {"x509_textfile": x509_textfile}
