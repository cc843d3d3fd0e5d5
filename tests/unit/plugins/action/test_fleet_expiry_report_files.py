# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The fleet report's files: rendering (JSON as Ansible's to_nice_json, HTML read back by the standard library's HTML
parser) and the writer (compare, then write atomically with mode 0644 into a 0755 directory)."""

from __future__ import annotations

import datetime
import html.parser
import json
import os
import stat

import pytest

from ansible.plugins.filter.core import to_nice_json

from ansible_collections.kubepki.certs.plugins.module_utils._pki import expiry_report_files as files
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report import fleet_report

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.timezone.utc)
MARKUP = '<script>alert("x")</script> & <b>'


def entry(path, status, days_left=None, not_after=None, subject=None):
    return {"path": path, "status": status, "days_left": days_left, "not_after": not_after, "subject": subject,
            "issuer": subject, "kubeconfig_entry": None, "signed_by": None, "bundle": []}


def result(*entries):
    return {"certificates": list(entries), "threshold_failures": [],
            "summary": {"total": len(entries), "counts": {}, "soonest": None}}


REPORT = fleet_report({
    "node-1": result(entry("/tls/ca.crt", "OK", 3000, "2035-01-01T00:00:00Z", "CN=" + MARKUP),
                     entry("/tls/gone.crt", "MISSING")),
    "node-2": result(entry("/tls/leaf.crt", "WARNING", 3, "2026-12-07T12:00:00Z", "CN=leaf")),
}, warn_days=30, fail_days=7, clusters={"node-1": "east <prod>"})


def test_json_is_what_to_nice_json_wrote():
    assert files.render_json(REPORT) == to_nice_json(REPORT, indent=2) + "\n"


def test_clusters_name_every_host():
    assert REPORT["hosts"]["node-1"]["cluster"] == "east <prod>"
    assert REPORT["hosts"]["node-2"]["cluster"] == ""


class _Text(html.parser.HTMLParser):
    """Start tags and the text of every <td> of the table with id=certificates."""

    def __init__(self):
        super().__init__()
        self.tags, self.cells, self._table, self._cell = [], [], None, None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self._table = dict(attrs).get("id")
        if tag == "td" and self._table == "certificates":
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_html_escapes_every_value_and_fetches_nothing():
    page = files.render_files(REPORT, host_count=2, now=NOW, formats=["html"])["fleet-expiry.html"]
    parser = _Text()
    parser.feed(page)
    assert parser.tags.count("script") == 1  # the page's own, none from a value
    assert "b" not in parser.tags and "link" not in parser.tags and "img" not in parser.tags
    assert "CN=" + MARKUP in parser.cells and "east <prod>" in parser.cells
    assert "src=" not in page and "href=" not in page
    assert page.count('class="mark ') == 2  # one timeline mark per certificate with a notAfter


def test_writer_creates_compares_and_rewrites(tmp_path):
    directory = str(tmp_path / "a" / "reports")
    rendered = files.render_files(REPORT, host_count=2, now=NOW)
    assert sorted(rendered) == ["fleet-expiry.html", "fleet-expiry.json", "fleet-expiry.md", "fleet-expiry.prom"]
    plan = files.plan_files(directory, rendered)
    assert files.directory_changes(directory) and all(item["changed"] for item in plan)
    old_umask = os.umask(0o077)
    try:
        files.write_files(directory, plan)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755
    assert sorted(os.listdir(directory)) == sorted(rendered)  # no temporary file left
    for name, text in rendered.items():
        path = os.path.join(directory, name)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
        with open(path, encoding="utf-8") as handle:
            assert handle.read() == text
    assert not files.directory_changes(directory)
    assert not any(item["changed"] for item in files.plan_files(directory, rendered))

    os.chmod(os.path.join(directory, "fleet-expiry.md"), 0o600)
    with open(os.path.join(directory, "fleet-expiry.json"), "w", encoding="utf-8") as handle:
        handle.write("{}\n")
    plan = files.plan_files(directory, rendered)
    assert [os.path.basename(i["path"]) for i in plan if i["changed"]] == ["fleet-expiry.json", "fleet-expiry.md"]
    diffs = files.diffs(plan)
    assert diffs[0]["before"] == "{}\n" and diffs[0]["after"] == rendered["fleet-expiry.json"]
    files.write_files(directory, plan)
    assert not any(item["changed"] for item in files.plan_files(directory, rendered))


def test_a_large_file_is_named_in_the_diff_not_shown(tmp_path):
    plan = files.plan_files(str(tmp_path), {"fleet-expiry.md": "x" * (files.MAX_DIFF_BYTES + 1)})
    assert files.diffs(plan)[0]["after"].startswith("(%s: " % plan[0]["path"])


def test_merge_parts_takes_every_variable_with_the_prefix():
    variables = {"part_2": {"b": {"x": 2}}, "part_1": {"a": {"x": 1}, "b": {"x": 1}}, "part_": {"c": {}}, "other": {}}
    assert files.merge_parts(variables, "part_") == {"a": {"x": 1}, "b": {"x": 2}}
    assert files.merge_parts({}, "part_") == {}
    with pytest.raises(ValueError, match="part_1 is not a dict"):
        files.merge_parts({"part_1": ["a"]}, "part_")


def test_merge_parts_reads_the_json_text_the_slices_publish():
    variables = {"part_1": json.dumps({"a": {"x": 1}}), "part_2": {"b": {"x": 2}}}
    assert files.merge_parts(variables, "part_") == {"a": {"x": 1}, "b": {"x": 2}}
    with pytest.raises(ValueError, match="part_1 is not the JSON text of a part"):
        files.merge_parts({"part_1": "{not json"}, "part_")
    with pytest.raises(ValueError, match="part_1 is not a dict"):
        files.merge_parts({"part_1": "[1]"}, "part_")
