# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The check_expiration role's kubeadm JSON (check_expiration_kubeadm_json) against the real
``kubeadm certs check-expiration -o json`` on the same node.

One run of the collection's check_expiration playbook, in cp1's mount namespace (its /etc/kubernetes is the node's
directory), over three local hosts: cp1 (kubeadm, default layout), a copy of cp1 with a leaf and a kubeconfig removed
(kubeadm, its directory given as kubepki_data_dir) and a k3s host. The file the role writes for each kubeadm node, and
the controller's copy (check_expiration_kubeadm_report), must be the text kubeadm prints for that node once
residualTime (seconds left, counted at each tool's own moment) is masked, with residualTime within the seconds between
the two runs. The k3s host gets no file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys

from kubeadm_node import copy_node, in_node, kubeadm_report, kubeadm_run

RESIDUAL = re.compile(r'"residualTime": -?[0-9]+')
NOW_SKEW = 120


def masked(text):
    return RESIDUAL.sub('"residualTime": <masked>', text)


def kubeadm_text(kubeadm, node):
    return kubeadm_run(kubeadm, node["dir"], "certs", "check-expiration", "--config", node["config"], "-o", "json")


def run_check_expiration(node, tmp_path, hosts):
    """ansible-playbook kubepki.certs.check_expiration over local hosts, in the node's namespace: the rc and output."""
    inventory = tmp_path / "inventory.ini"
    lines = ["[nodes]"]
    for name, host_vars in hosts.items():
        lines.append(" ".join([name, "ansible_connection=local", "ansible_python_interpreter=%s" % sys.executable]
                              + ["%s=%s" % item for item in host_vars.items()]))
    inventory.write_text("\n".join(lines) + "\n", encoding="utf-8")
    playbook = shutil.which("ansible-playbook")
    assert playbook, "ansible-playbook is not on PATH"
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="False",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    argv = [playbook, "-i", str(inventory), "kubepki.certs.check_expiration",
            "-e", "check_expiration_become=false", "-e", "check_expiration_kubeadm_report=true",
            "-e", "check_expiration_report_dir=%s" % (tmp_path / "reports")]
    result = in_node(node["dir"], argv, env=env)
    return result.returncode, result.stdout + result.stderr


def assert_as_kubeadm_prints(written, printed):
    assert masked(written) == masked(printed), "kubepki:\n%s\nkubeadm:\n%s" % (written, printed)
    ours, theirs = json.loads(written), json.loads(printed)
    for section in ("certificates", "certificateAuthorities"):
        for a, b in zip(ours[section], theirs[section]):
            assert abs(a["residualTime"] - b["residualTime"]) <= NOW_SKEW, (a, b)


def test_role_writes_what_kubeadm_prints(kubeadm, cp1, tmp_path):
    short = copy_node(cp1, str(tmp_path / "cp-missing"))
    for name in ("pki/front-proxy-client.crt", "pki/front-proxy-client.key", "scheduler.conf"):
        os.remove(os.path.join(short["dir"], name))
    out = tmp_path / "nodes"
    out.mkdir()
    hosts = {
        "cp1": {"kubepki_distribution": "kubeadm", "check_expiration_kubeadm_json": out / "cp1.json"},
        "cpmissing": {"kubepki_distribution": "kubeadm", "kubepki_data_dir": short["dir"],
                      "check_expiration_kubeadm_json": out / "cpmissing.json"},
        "k3s1": {"kubepki_distribution": "k3s", "check_expiration_kubeadm_json": out / "k3s1.json"},
    }
    rc, output = run_check_expiration(cp1, tmp_path, hosts)
    assert rc == 0, output[-4000:]

    for host, node in (("cp1", cp1), ("cpmissing", short)):
        printed = kubeadm_text(kubeadm, node)
        for path in (out / (host + ".json"), tmp_path / "reports" / "kubeadm" / (host + ".json")):
            assert_as_kubeadm_prints(path.read_text(encoding="utf-8"), printed)
        assert stat.S_IMODE(os.stat(out / (host + ".json")).st_mode) == 0o644
    # the oracle saw the removed files as missing (the comparison above covers the rest)
    missing = sorted(item["name"] for item in kubeadm_report(kubeadm, short)["certificates"] if item["missing"])
    assert missing == ["front-proxy-client", "scheduler.conf"]
    # only the kubeadm nodes got a file, and no temp file of the writes is left behind
    assert sorted(os.listdir(out)) == ["cp1.json", "cpmissing.json"]
    assert sorted(os.listdir(tmp_path / "reports" / "kubeadm")) == ["cp1.json", "cpmissing.json"]
