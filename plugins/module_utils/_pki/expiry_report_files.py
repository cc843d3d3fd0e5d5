# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The files of the fleet expiry report (JSON, Markdown, Prometheus text, HTML) and their writing on the controller.

Rendering is pure (report dict in, text out): the JSON as Ansible's ``to_nice_json(indent=2)`` wrote it, the Markdown
table, the Prometheus textfile of :mod:`expiry_metrics` and the HTML page of :mod:`expiry_html`. No file embeds the
wall-clock time of the run (only ``x509_cert_expired`` depends on the clock), so rewriting an unchanged fleet
changes nothing: the files change when the fleet does, or when a day passes (days left). :func:`plan_files` compares
with what is on disk, :func:`write_files` writes only what differs, each file atomically (:func:`files.atomic_write`).

The argument spec of the ``fleet_expiry_report`` action lives here, where both the action plugin and its
documentation module read it.
"""

from __future__ import annotations

import datetime
import json
import os
import stat

from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_html import render_html
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_metrics import textfile
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PUBLIC_FILE_MODE,
    atomic_write,
    ensure_dir,
    file_mode,
    read_if_exists,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeadm_expiry import expiration_info_text

REPORT_DIR_MODE = 0o755
BASE_NAME = "fleet-expiry"
FORMATS = ("json", "md", "prom", "html", "kubeadm-json")
DEFAULT_FORMATS = ("json", "md", "prom", "html")
KUBEADM_DIR = "kubeadm"  # kubeadm/<host>.json: kubeadm's CertificateExpirationInfo of each kubeadm node
# Larger files are named in the diff, not shown (Ansible's default MAX_FILE_SIZE_FOR_DIFF).
MAX_DIFF_BYTES = 104448

ARGUMENT_SPEC = {
    "results": {"type": "dict"},
    "parts_prefix": {"type": "str"},
    "warn_days": {"type": "int", "required": True},
    "fail_days": {"type": "int", "required": True},
    "show_soonest": {"type": "int", "default": 5},
    "return_report": {"type": "bool", "default": False},
    "cluster_var": {"type": "str", "default": "kubepki_cluster_name"},
    "dest": {"type": "path"},
    "formats": {"type": "list", "elements": "str", "choices": list(FORMATS), "default": list(DEFAULT_FORMATS)},
}
ARGUMENT_RULES = {"required_one_of": [("results", "parts_prefix")], "mutually_exclusive": [("results", "parts_prefix")]}


def merge_parts(variables: dict, prefix: str) -> dict:
    """The union of the parts (host -> result) in the variables named ``prefix`` + an id, in the order of the names.
    A part is the JSON text the slices publish (check_expiration_publish_part), or the dict itself."""
    merged = {}
    for name in sorted(name for name in variables if name.startswith(prefix) and len(name) > len(prefix)):
        part = variables[name]
        if isinstance(part, str):
            try:
                part = json.loads(part)
            except ValueError as exc:
                raise ValueError("%s is not the JSON text of a part (%s)" % (name, exc)) from None
        if not isinstance(part, dict):
            raise ValueError("%s is not a dict host -> cert_check result" % name)
        merged.update(part)
    return merged


def render_json(report: dict) -> str:
    """The report as ``to_nice_json(indent=2)`` renders it (sorted keys, non-ASCII kept), one final newline."""
    return json.dumps(report, indent=2, sort_keys=True, separators=(",", ": "), ensure_ascii=False) + "\n"


def _cell(value) -> str:
    return ("-" if value is None else str(value)).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict, *, host_count: int) -> str:
    """Counts per status, then one table row per certificate, in the report's order."""
    lines = ["# Certificate expiry report", "",
             "Warning window: %d days. Failure threshold: %d days." % (report["warn_days"], report["fail_days"]),
             "Hosts: %d. Certificates: %d." % (host_count, report["total"]), "",
             "| Status | Count |", "|---|---:|"]
    lines += ["| %s | %d |" % (status, count) for status, count in report["counts"].items()]
    lines += ["", "| Host | File | Subject | Status | Days left | Not after | Signed by |",
              "|---|---|---|---|---:|---|---|"]
    for row in report["certificates"]:
        where = row["path"] + ("#" + row["kubeconfig_entry"] if row.get("kubeconfig_entry") else "")
        lines.append("| " + " | ".join(_cell(value) for value in (
            row["host"], where, row.get("subject"), row["status"], row.get("days_left"), row.get("not_after"),
            row.get("signed_by"))) + " |")
    return "\n".join(lines) + "\n"


def render_kubeadm(results: dict) -> dict:
    """kubeadm/<host>.json -> the host's CertificateExpirationInfo as ``kubeadm certs check-expiration -o json`` prints
    it (4-space indent, kubeadm's field order), for every host whose cert_check result carries one (kubeadm nodes)."""
    return {"%s/%s.json" % (KUBEADM_DIR, host.replace(os.sep, "_")): expiration_info_text(result["kubeadm_expiration_info"])
            for host, result in sorted(results.items()) if result.get("kubeadm_expiration_info")}


def render_files(report: dict, *, host_count: int, now: datetime.datetime, formats=FORMATS, results=None) -> dict:
    """File name (relative to the report directory) -> text of every requested format; ``results`` (host ->
    cert_check result) for the kubeadm-json format."""
    renderers = {
        "json": lambda: render_json(report),
        "md": lambda: render_markdown(report, host_count=host_count),
        "prom": lambda: textfile(report["certificates"], now=now),
        "html": lambda: render_html(report, host_count=host_count),
    }
    rendered = {"%s.%s" % (BASE_NAME, fmt): renderers[fmt]() for fmt in FORMATS if fmt in formats and fmt in renderers}
    if "kubeadm-json" in formats:
        rendered.update(render_kubeadm(results or {}))
    return rendered


def _diff_text(data: bytes | None, label: str) -> str:
    if data is None:
        return ""
    if len(data) > MAX_DIFF_BYTES:
        return "(%s: %d bytes, larger than the diff shows)\n" % (label, len(data))
    return data.decode("utf-8", "replace")


def plan_files(directory: str, rendered: dict) -> list:
    """What writing ``rendered`` into ``directory`` would do: per file its path, new bytes, and whether the content
    or the mode differs from what is there (compare, then act)."""
    plan = []
    for name, text in rendered.items():
        path = os.path.join(directory, name)
        data = text.encode("utf-8")
        current = read_if_exists(path)
        changed = current != data or file_mode(path) != PUBLIC_FILE_MODE
        plan.append({"path": path, "data": data, "before": current, "changed": changed})
    return plan


def directory_changes(directory: str) -> bool:
    """Whether the report directory must be created or its mode set to 0755."""
    try:
        return stat.S_IMODE(os.stat(directory).st_mode) != REPORT_DIR_MODE
    except FileNotFoundError:
        return True


def write_files(directory: str, plan: list) -> None:
    """Create the directory (0755) and write the files that changed, each atomically with mode 0644."""
    if not ensure_dir(directory, mode=REPORT_DIR_MODE) and directory_changes(directory):
        os.chmod(directory, REPORT_DIR_MODE)
    for item in plan:
        if item["changed"]:
            ensure_dir(os.path.dirname(item["path"]), mode=REPORT_DIR_MODE)
            atomic_write(item["path"], item["data"], mode=PUBLIC_FILE_MODE)


def diffs(plan: list) -> list:
    """Ansible diff dicts (before/after) of the files that change."""
    return [{"before_header": item["path"], "after_header": item["path"],
             "before": _diff_text(item["before"], item["path"]), "after": _diff_text(item["data"], item["path"])}
            for item in plan if item["changed"]]
