# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run the molecule scenarios (default driver, no containers) from pytest, so CI counts them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIOS_DIR = os.path.join(COLLECTION_ROOT, "extensions", "molecule")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def scenarios() -> list:
    return sorted(name for name in os.listdir(SCENARIOS_DIR)
                  if os.path.isfile(os.path.join(SCENARIOS_DIR, name, "molecule.yml")))


def collections_path() -> str:
    configured = os.environ.get("ANSIBLE_COLLECTIONS_PATH", "")
    for entry in configured.split(os.pathsep):
        if entry and os.path.isdir(os.path.join(entry, "ansible_collections", "kubepki", "certs")):
            return configured
    pytest.fail("ANSIBLE_COLLECTIONS_PATH must name a tree holding ansible_collections/kubepki/certs "
                "(scripts/test.sh sets it to the staged collection)")
    return ""


@pytest.mark.parametrize("scenario", scenarios())
def test_molecule_scenario(scenario):
    molecule = shutil.which("molecule")
    assert molecule, "molecule not found on PATH: run scripts/bootstrap.sh and put .venv/bin on PATH"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), NO_COLOR="1", ANSIBLE_NOCOLOR="1",
               PY_COLORS="0")
    result = subprocess.run([molecule, "test", "-s", scenario], cwd=COLLECTION_ROOT, env=env, capture_output=True,
                            text=True, timeout=1500, check=False)
    output = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0, "molecule test -s %s failed (rc %d):\n%s" % (scenario, result.returncode, output[-6000:])
    assert re.search(r"%s\s*:\s*actions=\d+\s+successful=\d+.*failed=0" % re.escape(scenario), output), output[-3000:]
