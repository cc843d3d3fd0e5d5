# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared fixtures of the lab suites, and the scenario rule.

Fixtures (a missing tool FAILS the test, naming the Debian package scripts/bootstrap.sh installs; nothing skips):

``lab_harness``       the multi-node lab harness, tests/lab/kubepki_lab.py, as a module (up/down/LabError/LabBusy)
``lab_prerequisites`` root, sshd, ssh, nsenter, etcd, etcdctl, openssl and ansible-core: what a lab of SSH hosts needs
``installed_double``  the k3s/RKE2 double installed on the shared root (/usr/local/bin, /etc/init.d); left in place,
                      as other labs of this machine use it too
``double_python``     Debian's /usr/bin/python3 with python3-cryptography and python3-yaml (runs the double)
``work_dir``          a directory per test module for playbook logs and probe output (with the double installed)

Scenarios: a class marked ``@pytest.mark.scenario`` is one story whose tests run in order and build on each other
(test_01, test_02, ...). When one of its tests fails (or errors), each later test of the class is reported as an
error naming that first failure, instead of running against a half-done scenario and failing again for the same
cause (the cause itself is shown once, in the first failure). The class's fixtures are then not set up again.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DOUBLE = os.path.join(HERE, "double", "k3s_double.py")
DOUBLE_PYTHON = "/usr/bin/python3"
# Tool -> Debian package.
LAB_TOOLS = {"openssl": "openssl", "nsenter": "util-linux", "etcd": "etcd-server", "etcdctl": "etcd-client",
             "ssh": "openssh-client", "/usr/sbin/sshd": "openssh-server"}
FIRST_FAILURE = "kubepki_scenario_first_failure"


def pytest_configure(config):
    config.addinivalue_line("markers", "scenario: the class's tests run in order and build on each other; after the first "
                                       "failure the later ones are reported as errors naming it (tests/lab/conftest.py)")


def _scenario_class(item):
    cls = getattr(item, "cls", None)
    if cls is None or item.get_closest_marker("scenario") is None:
        return None
    return item.parent


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the fixtures: a scenario that already failed does not set up or run its later tests."""
    node = _scenario_class(item)
    first = getattr(node, FIRST_FAILURE, None) if node is not None else None
    if first is not None:
        pytest.fail("not run: this scenario stopped at %s (%s, see its report above)" % first, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    node = _scenario_class(item)
    if node is None or not report.failed or getattr(node, FIRST_FAILURE, None) is not None:
        return
    setattr(node, FIRST_FAILURE, (item.name, "failed" if report.when == "call" else "error in %s" % report.when))


def tool(name, packages=None):
    """Path of a tool; fails the test naming its Debian package."""
    packages = packages or LAB_TOOLS
    path = name if os.path.isabs(name) else shutil.which(name)
    assert path and os.access(path, os.X_OK), "needs %s (Debian package %s; scripts/bootstrap.sh installs it)" % (name, packages.get(name, name))
    return path


def ansible_bin(name):
    found = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
    assert os.access(found, os.X_OK), "needs %s: ansible-core in the venv (scripts/bootstrap.sh)" % name
    return found


@pytest.fixture(scope="session")
def lab_harness():
    spec = importlib.util.spec_from_file_location("kubepki_lab", os.path.join(HERE, "kubepki_lab.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def lab_prerequisites():
    assert os.geteuid() == 0, "the lab needs root (network and mount namespaces)"
    for name in LAB_TOOLS:
        tool(name)
    ansible_bin("ansible-playbook")
    ansible_bin("ansible")


@pytest.fixture(scope="session")
def double_python():
    assert os.access(DOUBLE_PYTHON, os.X_OK), "needs Debian's %s (python3)" % DOUBLE_PYTHON
    result = subprocess.run([DOUBLE_PYTHON, "-c", "import cryptography, yaml"], check=False, capture_output=True, timeout=60)
    assert result.returncode == 0, "needs Debian's /usr/bin/python3 with python3-cryptography and python3-yaml (scripts/bootstrap.sh)"
    return DOUBLE_PYTHON


@pytest.fixture(scope="session")
def installed_double(double_python):
    result = subprocess.run([double_python, DOUBLE, "install", "--root", "/"], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, "installing the double failed: %s%s" % (result.stdout, result.stderr)
    return "/usr/local/bin/k3s"


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory, lab_prerequisites, installed_double, request):
    """Playbook logs and probe output of one test module."""
    del lab_prerequisites, installed_double
    return str(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1].replace("test_", "") + "-"))
