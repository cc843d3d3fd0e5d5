# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""restart_node main(): systemctl calls in order (a recording stand-in on PATH), check mode, the gate, the leaf check.

The certificates are made with the openssl CLI, so the leaf check judges files our engine did not write.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest

from ansible_collections.kubepki.certs.plugins.modules import restart_node

from ansible_collections.kubepki.certs.tests.unit.module_args import patch_module_args


STAND_IN = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
if [ "$1" = restart ] && [ -e "{fail}" ]; then
    echo "Job for $2.service failed because the control process exited with error code." >&2
    exit 1
fi
if [ "$1 $2 $3" = "kubectl get --raw" ]; then
    echo "[-]etcd failed: reason withheld" >&2
    exit 1
fi
exit 0
"""


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", name + ".key",
            "-out", name + ".crt", "-subj", "/CN=%s@1700000000" % name, "-days", "30",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,digitalSignature",
            cwd=directory)


def make_leaf(directory, name, ca):
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", name + ".key",
            "-out", name + ".csr", "-subj", "/O=system:masters/CN=system:admin", cwd=directory)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key", "-CAcreateserial",
            "-out", name + ".crt", "-days", "20", cwd=directory)
    os.unlink(os.path.join(directory, name + ".csr"))


@pytest.fixture
def node(tmp_path, monkeypatch):
    assert shutil.which("openssl"), "needs the openssl CLI (Debian package openssl)"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    log.write_text("")
    for name in ("systemctl", "k3s"):
        script = bin_dir / name
        script.write_text(STAND_IN.format(log=log, fail=tmp_path / "fail-restart"))
        os.chmod(str(script), stat.S_IRWXU)
    monkeypatch.setenv("PATH", "%s:%s" % (bin_dir, os.environ.get("PATH", "/usr/bin:/bin")))
    data_dir = tmp_path / "k3s"
    tls = data_dir / "server" / "tls"
    tls.mkdir(parents=True)
    make_ca(str(tls), "client-ca")
    make_leaf(str(tls), "client-admin", "client-ca")
    return {"tmp": tmp_path, "log": log, "data_dir": str(data_dir), "tls": str(tls)}


def run_main(args, capsys, check_mode=False, diff=False):
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    if diff:
        args = dict(args, _ansible_diff=True)
    with patch_module_args(args):
        with pytest.raises(SystemExit) as caught:
            restart_node.main()
    return caught.value.code, json.loads(capsys.readouterr().out)


def calls(node):
    return node["log"].read_text().splitlines()


def test_daemon_reload_before_restart_then_leaves_checked(node, capsys):
    code, result = run_main({"distribution": "k3s", "data_dir": node["data_dir"], "node_role": "agent",
                             "daemon_reload": True}, capsys)
    assert code == 0, result
    assert calls(node) == ["systemctl daemon-reload", "systemctl restart k3s-agent"]
    assert result["changed"] and result["restarted"] and result["daemon_reloaded"]
    assert result["gate"] is None
    assert result["leaves"]["attempts"] == 1 and result["leaves"]["unchained"] == []


def test_no_daemon_reload_unless_asked(node, capsys):
    code, result = run_main({"distribution": "k3s", "data_dir": node["data_dir"], "node_role": "server"}, capsys)
    assert code == 0, result
    assert calls(node) == ["systemctl restart k3s"]
    assert result["daemon_reloaded"] is False


def test_check_mode_runs_nothing_and_reports_the_steps(node, capsys):
    code, result = run_main({"distribution": "k3s", "data_dir": node["data_dir"], "node_role": "agent",
                             "daemon_reload": True}, capsys, check_mode=True, diff=True)
    assert code == 0 and calls(node) == []
    assert result["changed"] is True and result["restarted"] is False
    assert result["commands"] == ["systemctl daemon-reload", "systemctl restart k3s-agent"]
    assert result["diff"]["after"] == "systemctl daemon-reload\nsystemctl restart k3s-agent\n"
    assert result["leaves"] is None


def test_no_restart_needed_still_checks_the_leaves(node, capsys):
    code, result = run_main({"distribution": "k3s", "data_dir": node["data_dir"], "node_role": "server",
                             "restart": False, "daemon_reload": True, "readyz": True}, capsys)
    assert code == 0, result
    assert calls(node) == [] and result["changed"] is False and result["gate"] is None
    assert result["leaves"]["certificates"] >= 2


def test_failed_restart_names_the_unit_and_stops(node, capsys):
    (node["tmp"] / "fail-restart").write_text("")
    code, result = run_main({"distribution": "k3s", "data_dir": node["data_dir"], "node_role": "server",
                             "readyz": True}, capsys)
    assert code == 1 and result["failed"]
    assert result["msg"].endswith("(rc 1): Job for k3s.service failed because the control process exited with "
                                  "error code.; see journalctl -u k3s")
    assert calls(node) == ["systemctl restart k3s"] and result["restarted"] is False


def test_gate_failure_names_the_failed_check(node, capsys):
    code, result = run_main({"distribution": "k3s", "data_dir": node["data_dir"], "node_role": "server",
                             "readyz": True, "timeout": 0}, capsys)
    assert code == 1
    assert result["msg"] == "health gate of k3s failed after 0 s (1 attempts): readyz: rc 1: failed checks: etcd (reason withheld)"
    assert calls(node) == ["systemctl restart k3s", "k3s kubectl get --raw /readyz"]
    assert result["leaves"] is None


class SteppedClock:
    """Time that passes only in sleep(): the number of attempts in a timeout no longer depends on the machine's
    load (each real attempt reads and verifies files, slow on a busy machine)."""

    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_leaf_from_another_ca_fails_after_its_retries(node, capsys, monkeypatch):
    stepped = SteppedClock()
    real_check_leaves = restart_node.check_leaves
    monkeypatch.setattr(restart_node, "check_leaves", lambda layout, **kwargs: real_check_leaves(
        layout, clock=stepped.clock, sleep=stepped.sleep, **kwargs))
    make_ca(node["tls"], "other-ca")
    make_leaf(node["tls"], "client-admin", "other-ca")
    os.unlink(os.path.join(node["tls"], "other-ca.crt"))
    code, result = run_main({"distribution": "k3s", "data_dir": node["data_dir"], "node_role": "agent",
                             "leaves_timeout": 1, "leaves_interval": 0.4}, capsys)
    assert code == 1
    assert result["leaves"]["unchained"] == [os.path.join(node["tls"], "client-admin.crt")]
    assert result["leaves"]["attempts"] == 3  # at 0, 0.4 and 0.8 s; a fourth would start after the 1 s timeout
    assert stepped.now == 0.8
    assert result["msg"].startswith("leaf check failed after ")
    assert "leaf certificates issued by no CA on this node: %s" % os.path.join(node["tls"], "client-admin.crt") in result["msg"]
    assert "PRIVATE KEY" not in json.dumps(result)
