# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""A node's expiry report as a Prometheus textfile (node_exporter's textfile collector), in the metric and label names
of enix/x509-certificate-exporter, so its dashboards and alert rules apply to the certificate in use of each file.

That exporter reads only the first certificate of a file (enix/x509-certificate-exporter#512). Here the certificate in
use (position 1: served by a leaf file, signing in a CA file) gets the exporter's series (``x509_cert_not_before``,
``x509_cert_not_after``, ``x509_cert_expired``, ``x509_cert_error``), and every certificate of the file, position 1
included, is also reported under ``kubepki_x509_bundle_cert_not_before`` / ``_not_after`` with the same labels and
``bundle_position``. So an old CA kept in a bundle during a rotation is visible without raising the exporter's expiry
alerts, which look at ``x509_cert_*``. No series depends on the clock but ``x509_cert_expired``: writing the same
certificates twice gives the same file.

Pure functions on the plain entries of ``cert_check`` (expiry_examination), no crypto library needed.
"""

from __future__ import annotations

import datetime

METRICS = (
    ("x509_cert_not_before", "Unix timestamp of the notBefore of the file's certificate in use (its first)."),
    ("x509_cert_not_after", "Unix timestamp of the notAfter of the file's certificate in use (its first)."),
    ("x509_cert_expired", "1 if the file's certificate in use (its first) is expired, 0 otherwise."),
    ("x509_cert_error", "1 if the file could not be read or parsed, 0 otherwise."),
    ("kubepki_x509_bundle_cert_not_before", "Unix timestamp of the notBefore of every certificate of the file."),
    ("kubepki_x509_bundle_cert_not_after", "Unix timestamp of the notAfter of every certificate of the file."),
)
UNREADABLE = ("INVALID", "MISSING")


def _epoch(iso: str) -> float:
    return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _series(name: str, labels: dict, value: float) -> str:
    rendered = ",".join('%s="%s"' % (key, _escape(str(labels[key]))) for key in labels)
    return "%s{%s} %s" % (name, rendered, "%d" % value if float(value).is_integer() else repr(float(value)))


def _file_labels(entry: dict, host: str | None) -> dict:
    labels = {"filepath": entry["path"], "embedded_kind": "", "embedded_key": ""}
    if entry.get("kubeconfig_entry"):
        labels.update(embedded_kind="kubeconfig", embedded_key=entry["kubeconfig_entry"])
    if host or entry.get("host"):
        labels["hostname"] = host or entry["host"]  # a fleet report's entries name their host
    return labels


def _certificate_labels(entry: dict, item: dict | None, host: str | None) -> dict:
    """Every series has the same label names (node_exporter wants one set per metric): empty for an unreadable file."""
    item = item or {"subject_cn": "", "issuer_cn": "", "serial": "", "position": ""}
    return dict(_file_labels(entry, host), subject_CN=item["subject_cn"], issuer_CN=item["issuer_cn"],
                serial_number=item["serial"], bundle_position=item["position"])


def series(entries: list, *, now: datetime.datetime, host: str | None = None) -> dict:
    """Metric name -> [(labels, value)] for the entries (cert_check's ``certificates``)."""
    found = {name: [] for name, _help in METRICS}
    for entry in entries:
        if entry["status"] in UNREADABLE:
            found["x509_cert_error"].append((_certificate_labels(entry, None, host), 1))
            continue
        for item in entry.get("bundle") or ():
            labels = _certificate_labels(entry, item, host)
            found["kubepki_x509_bundle_cert_not_before"].append((labels, _epoch(item["not_before"])))
            found["kubepki_x509_bundle_cert_not_after"].append((labels, _epoch(item["not_after"])))
            if item["position"] == 1:
                found["x509_cert_not_before"].append((labels, _epoch(item["not_before"])))
                found["x509_cert_not_after"].append((labels, _epoch(item["not_after"])))
                found["x509_cert_expired"].append((labels, 1 if _epoch(item["not_after"]) < now.timestamp() else 0))
                found["x509_cert_error"].append((labels, 0))
    return found


def textfile(entries: list, *, now: datetime.datetime, host: str | None = None) -> str:
    """The Prometheus text exposition of :func:`series`: HELP and TYPE (gauge) for each metric, one line per series."""
    found, lines = series(entries, now=now, host=host), []
    for name, help_text in METRICS:
        lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s gauge" % name]
        lines += [_series(name, labels, value) for labels, value in found[name]]
    return "\n".join(lines) + "\n"
