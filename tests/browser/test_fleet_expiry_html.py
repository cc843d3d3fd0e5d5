# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""fleet-expiry.html in headless Chromium: check_expiration run by ansible-playbook on three local nodes whose
certificates OpenSSL makes here (valid, near expiry, expired, one unreadable file, one missing file, a CA whose subject
holds markup), then the page opened in Debian's chromium over the DevTools protocol. The expected rows come from
OpenSSL's own dates and the inventory, not from the collection; sorting is done by real mouse clicks and key presses.

A screenshot is kept in $KUBEPKI_TEST_ARTIFACTS (scripts/test.sh: tests/output/browser of the checkout), else in
pytest's tmp path. Without chromium the test fails: it is never skipped."""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
import time

from chromium import Chromium

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKUP_CN = '<img id=injected src=x> &amp; "q"'
CLUSTERS = {"node-a": "east <prod>", "node-b": "east <prod>", "node-c": "lab"}
# host -> leaf validity in days (OpenSSL's -days; -1 makes a certificate that expired yesterday)
LEAF_DAYS = {"node-a": 400, "node-b": 20, "node-c": -1}


def openssl(*argv) -> str:
    return subprocess.run(["openssl", *argv], check=True, capture_output=True, text=True).stdout


def not_after(path: str) -> datetime.datetime:
    text = openssl("x509", "-in", path, "-noout", "-enddate").strip().split("=", 1)[1]
    return datetime.datetime.strptime(text, "%b %d %H:%M:%S %Y GMT").replace(tzinfo=datetime.timezone.utc)


def subject(path: str) -> str:
    return openssl("x509", "-in", path, "-noout", "-subject", "-nameopt", "RFC2253").strip().split("=", 1)[1]


def make_node(directory: str, host: str) -> list:
    """A CA and a leaf it signed (node-c: also an unreadable file and a missing one); the paths to check."""
    os.makedirs(directory)
    ca, leaf = os.path.join(directory, "ca"), os.path.join(directory, "leaf")
    ca_cn = MARKUP_CN if host == "node-b" else "%s-ca@1700000000" % host
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", ca + ".key",
            "-out", ca + ".crt", "-subj", "/CN=" + ca_cn, "-days", "3650")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", leaf + ".key", "-out",
            leaf + ".csr", "-subj", "/CN=kube-apiserver")
    openssl("x509", "-req", "-in", leaf + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key", "-CAcreateserial",
            "-days", str(LEAF_DAYS[host]), "-out", leaf + ".crt")
    paths = [ca + ".crt", leaf + ".crt"]
    if host == "node-c":
        with open(os.path.join(directory, "garbage.crt"), "w", encoding="ascii") as handle:
            handle.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        paths += [os.path.join(directory, "garbage.crt"), os.path.join(directory, "missing.crt")]
    return paths


def expected_rows(paths: dict, checked_from: datetime.datetime, checked_to: datetime.datetime) -> list:
    """(host, cluster, file, status, days left or None, issuer) per file, from OpenSSL; days as the floor of the days
    between the check and notAfter, at either end of the run (they differ only across a second boundary)."""
    rows = []
    for host, files in paths.items():
        for path in files:
            name = os.path.basename(path)
            if name == "missing.crt":
                rows.append((host, CLUSTERS[host], path, "MISSING", None, None))
                continue
            if name == "garbage.crt":
                rows.append((host, CLUSTERS[host], path, "INVALID", None, None))
                continue
            end = not_after(path)
            days = {math.floor((end - moment).total_seconds() / 86400) for moment in (checked_from, checked_to)}
            status = "EXPIRED" if end < checked_to else ("WARNING" if min(days) < 30 else "OK")
            issuer = subject(os.path.join(os.path.dirname(path), "ca.crt"))
            rows.append((host, CLUSTERS[host], path, status, days, issuer))
    return rows


def run_report(tmp_path) -> tuple:
    paths = {host: make_node(str(tmp_path / "nodes" / host), host) for host in CLUSTERS}
    inventory = {"all": {"hosts": {host: {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "kubepki_distribution": "k3s",
        "kubepki_cluster_name": CLUSTERS[host], "check_expiration_paths": paths[host],
        "check_expiration_only_paths": True} for host in CLUSTERS}}}
    inventory_file = tmp_path / "inventory.json"
    inventory_file.write_text(json.dumps(inventory))
    report_dir = tmp_path / "report"
    started = datetime.datetime.now(datetime.timezone.utc)
    run = subprocess.run(["ansible-playbook", "-i", str(inventory_file),
                          os.path.join(COLLECTION_ROOT, "playbooks", "check_expiration.yml"),
                          "-e", json.dumps({"check_expiration_become": False, "check_expiration_report_dir": str(report_dir),
                                            "check_expiration_warn_days": 30, "check_expiration_fail_days": 7})],
                         capture_output=True, text=True, check=False, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    finished = datetime.datetime.now(datetime.timezone.utc)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return report_dir / "fleet-expiry.html", expected_rows(paths, started, finished)


def table(browser, selector: str) -> list:
    return browser.evaluate("Array.from(document.querySelectorAll(%s)).map(function(r){return Array.from(r.cells)"
                            ".map(function(c){return c.textContent;});})" % json.dumps(selector + " tbody tr"))


def artifacts_dir(tmp_path) -> str:
    directory = os.environ.get("KUBEPKI_TEST_ARTIFACTS") or str(tmp_path)
    os.makedirs(directory, exist_ok=True)
    return directory


def test_fleet_expiry_html_in_headless_chromium(tmp_path):
    page, expected = run_report(tmp_path)
    source = page.read_text(encoding="utf-8")
    assert "<img" not in source and "&amp;amp" in source  # the markup of the subject is text, its entity escaped again
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with Chromium(str(profile)) as browser:
        browser.open(page.as_uri())
        # Self-contained: nothing fetched, no element that could fetch, and the subject's markup was not parsed.
        assert browser.evaluate("performance.getEntriesByType('resource').length") == 0
        assert browser.evaluate("document.querySelectorAll('[src],[href],link,iframe').length") == 0
        assert browser.evaluate("document.getElementById('injected')") is None

        # Every certificate a row: host, cluster, file, issuer, status, days left as OpenSSL's dates give them.
        rows = table(browser, "#certificates")
        assert len(rows) == len(expected) == 8
        got = {(r[0], r[1], r[2]): r for r in rows}
        for host, cluster, path, status, days, issuer in expected:
            row = got[(host, cluster, path)]
            assert row[5] == status, (path, row)
            assert (row[6] == "-") if days is None else (int(row[6]) in days), (path, row, days)
            assert row[4] == (issuer if issuer is not None else "-"), (path, row)
        # The status cells carry the status colour class the page styles.
        colours = browser.evaluate("Array.from(document.querySelectorAll('#certificates tbody .status'))"
                                   ".map(function(e){return [e.textContent, e.className,"
                                   " getComputedStyle(e).backgroundColor];})")
        assert all(cls == "status status-" + text for text, cls, _bg in colours)
        assert len({bg for text, _cls, bg in colours if text in ("OK", "EXPIRED", "WARNING")}) == 3

        # Summary per cluster and CA.
        summary = {(r[0], r[1]): int(r[3]) for r in table(browser, "#summary")}
        assert summary == {("east <prod>", subject(os.path.join(str(tmp_path), "nodes", "node-a", "ca.crt"))): 2,
                           ("east <prod>", subject(os.path.join(str(tmp_path), "nodes", "node-b", "ca.crt"))): 2,
                           ("lab", subject(os.path.join(str(tmp_path), "nodes", "node-c", "ca.crt"))): 2,
                           ("lab", "(not readable)"): 2}

        # The timeline: one mark per certificate that has an expiry date.
        marks = browser.evaluate("Array.from(document.querySelectorAll('#timeline circle.mark'))"
                                 ".map(function(c){return c.getAttribute('data-host');})")
        assert sorted(marks) == sorted(host for host, _c, _p, _s, days, _i in expected if days is not None)

        # A click on "Days left" sorts ascending (rows without a date last), a second click descending.
        browser.click("#certificates thead th:nth-child(7) button")
        days_column = [r[6] for r in table(browser, "#certificates")]
        dated = [int(d) for d in days_column if d != "-"]
        assert dated == sorted(dated) and days_column[len(dated):] == ["-", "-"], days_column
        assert browser.evaluate("document.querySelector('#certificates thead th:nth-child(7)')"
                                ".getAttribute('aria-sort')") == "ascending"
        browser.screenshot(os.path.join(artifacts_dir(tmp_path), "fleet-expiry-sorted-by-days.png"))
        browser.click("#certificates thead th:nth-child(7) button")
        dated_desc = [int(r[6]) for r in table(browser, "#certificates") if r[6] != "-"]
        assert dated_desc == sorted(dated, reverse=True) and dated_desc != dated

        # Keyboard: focus the "Host" header's button and press Enter.
        hosts_before = [r[0] for r in table(browser, "#certificates")]
        assert hosts_before != sorted(hosts_before)
        browser.evaluate("document.querySelector('#certificates thead th:nth-child(1) button').focus()")
        browser.press_enter()
        hosts = [r[0] for r in table(browser, "#certificates")]
        assert hosts == sorted(hosts), hosts
        assert browser.evaluate("document.querySelector('#certificates thead th:nth-child(1)')"
                                ".getAttribute('aria-sort')") == "ascending"
        screenshot = os.path.join(artifacts_dir(tmp_path), "fleet-expiry.png")
        time.sleep(0.2)
        browser.screenshot(screenshot)
    with open(screenshot, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    print("screenshots in %s" % artifacts_dir(tmp_path))
