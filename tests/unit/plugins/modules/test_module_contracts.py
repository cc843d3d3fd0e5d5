# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Contracts every module keeps, read from the modules themselves (a new module is checked without being listed):
it is in the action group, its distribution choices are one of layout.py's constants and its DOCUMENTATION lists
them, it spells no distribution fact of its own, and its documented attributes match what it does."""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest
import yaml

from ansible_collections.kubepki.certs.plugins.module_utils._pki import layout as layout_mod

COLLECTION = Path(__file__).resolve().parents[4]
MODULES = sorted(path.stem for path in (COLLECTION / "plugins" / "modules").glob("*.py") if path.stem != "__init__")
DOC_STRINGS = ("DOCUMENTATION", "EXAMPLES", "RETURN")
INFO_FRAGMENT = "kubepki.certs._attributes.info_module"
WRITES_FRAGMENT = "kubepki.certs._file_writes"
KEYS_FRAGMENT = "kubepki.certs._file_writes.private_keys"


class _SpecCaptured(Exception):
    pass


class _CapturingAnsibleModule:
    """Stands in for AnsibleModule: records the keyword arguments main() passes, then stops main()."""

    captured: dict = {}

    def __init__(self, **kwargs):
        type(self).captured = kwargs
        raise _SpecCaptured()


def _module(name):
    return importlib.import_module("ansible_collections.kubepki.certs.plugins.modules.%s" % name)


def _arguments(name, monkeypatch) -> dict:
    """The AnsibleModule(...) keyword arguments of a module's main()."""
    module = _module(name)
    monkeypatch.setattr(module, "AnsibleModule", _CapturingAnsibleModule)
    with pytest.raises(_SpecCaptured):
        module.main()
    return _CapturingAnsibleModule.captured


def _documentation(name) -> dict:
    return yaml.safe_load(_module(name).DOCUMENTATION)


def _fragment(name) -> dict:
    """A kubepki.certs doc fragment by its documented name (``kubepki.certs._file_writes.private_keys``)."""
    parts = name.split(".")
    fragment = importlib.import_module("ansible_collections.kubepki.certs.plugins.doc_fragments." + parts[2])
    return yaml.safe_load(getattr(fragment.ModuleDocFragment, parts[3].upper() if len(parts) > 3 else "DOCUMENTATION"))


def _merged_attributes(documentation) -> dict:
    """The attributes as Ansible shows them: each fragment's, then the module's own keys over them."""
    merged = {}
    for name in documentation.get("extends_documentation_fragment", []):
        for attribute, entry in _fragment(name).get("attributes", {}).items():
            merged.setdefault(attribute, {}).update(entry)
    for attribute, entry in documentation.get("attributes", {}).items():
        merged.setdefault(attribute, {}).update(entry)
    return merged


def _layout_constants() -> dict:
    """layout.py's tuples of distribution names, by constant name."""
    return {name: value for name, value in vars(layout_mod).items()
            if name.endswith("DISTRIBUTIONS") and isinstance(value, tuple)}


def test_modules_are_found():
    assert {"ca_chain", "cert_check", "health_gate", "join_token"} <= set(MODULES)


def test_every_module_is_in_the_action_group():
    runtime = yaml.safe_load((COLLECTION / "meta" / "runtime.yml").read_text())
    group = runtime["action_groups"]["pki"]
    assert sorted(group) == MODULES, "meta/runtime.yml action_groups.pki must list exactly the modules under " \
                                     "plugins/modules (missing: %s, stale: %s)" % (
                                         sorted(set(MODULES) - set(group)), sorted(set(group) - set(MODULES)))


@pytest.mark.parametrize("name", MODULES)
def test_documented_choices_equal_the_argument_spec(name, monkeypatch):
    spec = _arguments(name, monkeypatch)["argument_spec"]
    options = _documentation(name)["options"]
    for option, entry in spec.items():
        if "choices" in entry:
            assert options[option]["choices"] == list(entry["choices"]), "%s: %s" % (name, option)


@pytest.mark.parametrize("name", MODULES)
def test_distribution_choices_come_from_the_layout_table(name, monkeypatch):
    spec = _arguments(name, monkeypatch)["argument_spec"]
    constants = _layout_constants()
    for option, entry in spec.items():
        choices = tuple(entry.get("choices") or ())
        if option == "distribution" or set(choices) & set(layout_mod.DISTRIBUTIONS):
            assert choices in constants.values(), "%s: %s choices %s are none of layout.py's %s" % (
                name, option, choices, sorted(constants))


def _distribution_facts() -> tuple:
    """(exact words, file names, ports) that only layout.py may spell."""
    words, file_names, ports = set(layout_mod.DISTRIBUTIONS), set(), set()
    for distribution in layout_mod.DISTRIBUTIONS:
        layout = layout_mod.get_layout(distribution)
        words |= {layout.program, layout.server_unit} | set(layout.token_env_vars)
        words |= {layout.agent_unit} if layout.agent_unit else set()
        for ca in layout.cas:
            file_names |= {os.path.basename(ca.cert), os.path.basename(ca.key)}
        for leaf in layout.leaves:
            file_names |= {os.path.basename(leaf.cert), os.path.basename(leaf.key)}
        file_names |= {name for name in (layout.service_key, layout.service_pub) if name}
        ports.add(layout.supervisor_port)
    return words, file_names, ports


def _code_constants(name):
    """Every constant in a module's code, its DOCUMENTATION/EXAMPLES/RETURN strings left out."""
    tree = ast.parse((COLLECTION / "plugins" / "modules" / ("%s.py" % name)).read_text())
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id in DOC_STRINGS for target in statement.targets):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
                yield node


@pytest.mark.parametrize("name", MODULES)
def test_no_module_spells_a_distribution_fact(name):
    words, file_names, ports = _distribution_facts()
    found = []
    for node in _code_constants(name):
        value = node.value
        if isinstance(value, str) and (value in words or any(file_name in value for file_name in file_names)):
            found.append("line %d: %r" % (node.lineno, value))
        elif isinstance(value, int) and value in ports:
            found.append("line %d: %r" % (node.lineno, value))
    assert not found, "%s spells distribution facts the layout table holds: %s" % (name, ", ".join(found))


def test_the_fact_scan_can_fail():
    # The scan above finds what it is meant to find, so a pass means something.
    words, file_names, ports = _distribution_facts()
    assert {"k3s", "rke2", "rke2-server", "kubelet", "K3S_TOKEN"} <= words
    assert {"server-ca.crt", "sa.pub", "service.key", "kube-ca.pem"} <= file_names
    assert 9345 in ports


@pytest.mark.parametrize("name", MODULES)
def test_documented_attributes_are_truthful(name, monkeypatch):
    documentation = _documentation(name)
    fragments = documentation.get("extends_documentation_fragment", [])
    attributes = documentation.get("attributes", {})
    assert _arguments(name, monkeypatch).get("supports_check_mode") is True, "%s: every module supports check mode" % name
    if KEYS_FRAGMENT in fragments:
        assert WRITES_FRAGMENT in fragments, "%s: writing keys is writing files" % name
    if INFO_FRAGMENT in fragments:
        assert WRITES_FRAGMENT not in fragments, "%s: documented as changing nothing, and as writing files" % name
        assert "diff_mode" not in attributes and "check_mode" not in attributes, \
            "%s: a read-only module takes check_mode/diff_mode (N/A) from %s" % (name, INFO_FRAGMENT)
    else:
        # Every module that changes something reports it as a diff, and predicts it in check mode.
        merged = _merged_attributes(documentation)
        assert merged["diff_mode"]["support"] == "full", name
        assert merged["check_mode"]["support"] == "full", name


ROLE_SPECS = sorted((COLLECTION / "roles").glob("*/meta/argument_specs.yml"))


def _role_options(options: dict, prefix=""):
    for option, entry in (options or {}).items():
        yield prefix + option, entry
        yield from _role_options(entry.get("options"), prefix + option + ".")


@pytest.mark.parametrize("spec_file", ROLE_SPECS, ids=lambda path: path.parents[1].name)
def test_role_distribution_choices_come_from_the_layout_table(spec_file):
    # Role argument specs are YAML and cannot import layout.py, so they are held to its constants here.
    constants = _layout_constants()
    entry_points = yaml.safe_load(spec_file.read_text())["argument_specs"]
    checked = 0
    for entry_point in entry_points.values():
        for option, entry in _role_options(entry_point.get("options")):
            choices = tuple(entry.get("choices") or ())
            if option.endswith("distribution") or set(choices) & set(layout_mod.DISTRIBUTIONS):
                checked += 1
                assert choices in constants.values(), "%s: %s choices %s are none of layout.py's %s" % (
                    spec_file, option, choices, sorted(constants))
    assert checked or "distribution" not in spec_file.read_text(), "%s names a distribution option not checked" % spec_file
