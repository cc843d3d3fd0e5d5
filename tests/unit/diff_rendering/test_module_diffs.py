# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every module that changes files, run through main() as Ansible runs it: in check mode with --diff it writes
nothing and its diff (rendered by Ansible's own callback) names the files; for real, the files that changed on
disk are exactly the files its diff named; a rerun changes nothing and has no diff."""

from __future__ import annotations

import importlib
import json
import os

import pytest
from ansible.plugins.callback import CallbackBase

from ansible_collections.kubepki.certs.plugins.module_utils._pki.ca_set import CASetRequest, apply_plan, plan_ca_set
from ansible_collections.kubepki.certs.tests.unit.module_args import patch_module_args

FAST = {"root_key_type": "ecdsa-p256", "intermediate_key_type": "ecdsa-p256", "service_key_type": "ecdsa-p256"}
OLD_HASH, NEW_HASH = "a" * 64, "b" * 64


def run(name, args, capsys, *, check_mode=False):
    module = importlib.import_module("ansible_collections.kubepki.certs.plugins.modules.%s" % name)
    args = dict(args, _ansible_diff=True, _ansible_check_mode=check_mode)
    with patch_module_args(args):
        with pytest.raises(SystemExit) as caught:
            module.main()
    result = json.loads(capsys.readouterr().out)
    assert caught.value.code == 0, result
    return result


def snapshot(root) -> dict:
    files = {}
    for base, _dirs, names in os.walk(str(root)):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as handle:
                files[path] = handle.read()
    return files


def changed_on_disk(before: dict, after: dict) -> set:
    return {path for path in set(before) | set(after) if before.get(path) != after.get(path)}


def named_in_diff(diff) -> set:
    """The files a diff says change: each ``<path>: <state>`` line, or the header of an entry whose lines are
    about lines of that file (``line N: key: ...``)."""
    paths = set()
    for entry in diff if isinstance(diff, list) else [diff]:
        for line in entry["after"].splitlines():
            subject = line.split(": ", 1)[0]
            paths.add(subject if subject.startswith("/") else entry["after_header"])
    return paths


def live_tls(tmp_path) -> str:
    tls = str(tmp_path / "live" / "server" / "tls")
    apply_plan(plan_ca_set(CASetRequest(path=tls, distribution="k3s", **FAST)))
    return tls


def _ca_chain(tmp_path):
    return {"path": str(tmp_path / "tls"), "distribution": "k3s", **FAST}


def _ca_rotation(tmp_path):
    return {"current_path": live_tls(tmp_path), "staging_dir": str(tmp_path / "stage"), "distribution": "k3s",
            "service_key": "keep"}


def _service_account_key(tmp_path):
    return {"path": os.path.join(live_tls(tmp_path), "service.key"), "dest": str(tmp_path / "stage" / "service.key"),
            "distribution": "k3s", "key_type": "ecdsa-p256"}


def _join_token(tmp_path):
    token = tmp_path / "etc" / "token"
    token.parent.mkdir()
    token.write_text("K10%s::server:s3cret-password\n" % OLD_HASH)
    config = tmp_path / "etc" / "config.yaml"
    config.write_text("token: K10%s::server:s3cret-password\nnode-name: a\n" % OLD_HASH)
    return {"ca_hash": NEW_HASH, "token_files": [str(token)], "config_files": [str(config)], "distribution": "k3s",
            "backup_dir": str(tmp_path / "backup")}


def _backup(tmp_path):
    return {"paths": [live_tls(tmp_path)], "dest": str(tmp_path / "backup")}


def _backup_restored(tmp_path):
    tls = live_tls(tmp_path)
    run_quietly("backup", {"paths": [tls], "dest": str(tmp_path / "backup")})
    with open(os.path.join(tls, "server-ca.crt"), "ab") as handle:
        handle.write(b"# changed after the backup\n")
    os.unlink(os.path.join(tls, "client-ca.crt"))
    return {"state": "restored", "paths": [os.path.join(tls, "server-ca.crt"), os.path.join(tls, "client-ca.crt"),
                                           os.path.join(tls, "request-header-ca.crt")],
            "dest": str(tmp_path / "backup")}


def run_quietly(name, args):
    """Set-up through a module; its output is discarded by the test's first capsys.readouterr()."""
    module = importlib.import_module("ansible_collections.kubepki.certs.plugins.modules.%s" % name)
    with patch_module_args(args):
        with pytest.raises(SystemExit) as caught:
            module.main()
    assert caught.value.code == 0


CASES = {
    "ca_chain": _ca_chain,
    "ca_rotation": _ca_rotation,
    "service_account_key": _service_account_key,
    "join_token": _join_token,
    "backup": _backup,
    "backup restored": _backup_restored,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_diff_names_what_changes(case, tmp_path, capsys):
    name = case.split()[0]
    args = CASES[case](tmp_path)
    capsys.readouterr()  # whatever set-up printed
    before = snapshot(tmp_path)

    predicted = run(name, args, capsys, check_mode=True)
    assert predicted["changed"] and predicted["diff"]
    assert snapshot(tmp_path) == before, "%s wrote in check mode" % name
    rendered = CallbackBase()._get_diff(predicted["diff"])
    assert all(path in rendered for path in named_in_diff(predicted["diff"]))
    assert "BEGIN" not in rendered and "s3cret-password" not in rendered

    applied = run(name, args, capsys)
    assert applied["changed"]
    assert named_in_diff(applied["diff"]) == named_in_diff(predicted["diff"])  # a new key has a new fingerprint
    changed = changed_on_disk(before, snapshot(tmp_path))
    if name == "join_token":
        changed = {path for path in changed if not path.startswith(str(tmp_path / "backup"))}  # its backup copies
    assert changed == named_in_diff(applied["diff"])

    again = run(name, args, capsys)
    assert not again["changed"] and "diff" not in again
