# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the TLS interop tests (helpers live in ``interop_lib``).

- ``go_verifier``: the Go crypto/x509 judge in ``go/``, built once per session (offline, stdlib only);
- ``module_runs`` / ``scenario``: ``kubepki.certs.ca_chain`` run through ansible-playbook for every
  scenario of ``interop_lib.SCENARIOS``; ``scenario`` is parametrised over them;
- ``openssl``: the openssl CLI leaf issuer and verifier; ``free_port``; ``processes`` (peers killed at teardown).
"""

from __future__ import annotations

import os

import pytest

from interop_lib import (
    HERE,
    SCENARIOS,
    GoVerifier,
    OpenSSL,
    PortAllocator,
    Processes,
    Scenario,
    find_tool,
    prepare_supplied,
    run,
    run_playbook,
)


@pytest.fixture
def processes(tmp_path):
    procs = Processes(str(tmp_path))
    yield procs
    procs.stop_all()


@pytest.fixture(scope="session")
def free_port():
    return PortAllocator()


@pytest.fixture(scope="session")
def openssl():
    return OpenSSL(find_tool("openssl"))


@pytest.fixture(scope="session")
def go_verifier(tmp_path_factory):
    """Build ``go/`` once per session, offline, with throw-away GOCACHE/GOPATH."""
    go = find_tool("go")
    work = tmp_path_factory.mktemp("go")
    env = dict(os.environ, GOCACHE=str(work / "cache"), GOPATH=str(work / "gopath"), GO111MODULE="on",
               GOPROXY="off", GOFLAGS="", GOTOOLCHAIN="local", CGO_ENABLED="0", HOME=str(work))
    binary = str(work / "pkiverify")
    result = run([go, "build", "-o", binary, "."], cwd=os.path.join(HERE, "go"), env=env, timeout=300)
    if result.returncode != 0:
        pytest.fail("go build of tests/interop/go failed:\n%s%s" % (result.stdout, result.stderr), pytrace=False)
    return GoVerifier(binary)


@pytest.fixture(scope="session")
def module_runs(tmp_path_factory, openssl):
    """Run ``kubepki.certs.ca_chain`` for every scenario in one playbook (plus an idempotence re-run)."""
    base = str(tmp_path_factory.mktemp("ca_chain"))
    supplied_dir = os.path.join(base, "supplied")
    os.makedirs(supplied_dir)
    tasks, plan = [], []
    for name, spec in SCENARIOS.items():
        options = dict(spec["options"])
        options.update(prepare_supplied(name, spec, openssl, supplied_dir))
        options["path"] = os.path.join(base, name)
        plan.append((name, options))
        tasks.append({"name": name, "kubepki.certs.ca_chain": options})
    # Second run of the first scenario: must report no change and the same hash.
    first_name, first_options = plan[0]
    tasks.append({"name": first_name + " (again)", "kubepki.certs.ca_chain": first_options})
    results = run_playbook(tasks, base)
    runs = {}
    for name, options in plan:
        if name not in results:
            pytest.fail("playbook did not run task %s: %s" % (name, sorted(results)), pytrace=False)
        runs[name] = Scenario(name, options["path"], options, results[name], openssl)
    runs["_rerun"] = results.get(first_name + " (again)", {})
    return runs


@pytest.fixture
def scenario(request, module_runs):
    """The Scenario of the current parameter (see pytest_generate_tests), after checking its run succeeded."""
    current = module_runs[request.param]
    current.check_ok()
    return current


def pytest_generate_tests(metafunc):
    """``scenario`` is parametrised over every scenario (or the test's ``scenarios`` marker)."""
    if "scenario" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("scenarios")
        names = list(marker.args) if marker else list(SCENARIOS)
        metafunc.parametrize("scenario", names, indirect=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "scenarios(*names): run the test only for these module scenarios")
