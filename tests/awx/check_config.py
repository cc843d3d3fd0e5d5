# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checks of playbooks/awx (the AWX configuration) that neither a syntax check nor ansible-lint makes, offline.

- Every top-level playbook of the collection has a job template, and every job template a top-level playbook.
- Every survey variable is one the collection reads: an option of a role (roles/*/meta/argument_specs.yml) or a
  variable a playbook or a role's defaults template (playbooks/*.yml, roles/*/defaults/main.yml).
- Every survey is one the controller accepts: AWX's own survey rules (required fields and their types, unique
  variables, known question types, defaults of the question's type and among its choices, integer bounds), and
  each default within its question's bounds.
- The workflow's nodes use only the node options awx.awx documents (its module's DOCUMENTATION, where the module's
  argument spec leaves them unchecked), name job templates that configure.yml creates, link to nodes that exist,
  and prompt only for what the job template lets a node set (job type, extra data).

Usage: python tests/awx/check_config.py <path of the awx.awx collection> (from the collection root). Prints one line
per check and exits 1 if one failed."""

from __future__ import annotations

import glob
import os
import re
import sys

import yaml

AWX_DIR = os.path.join("playbooks", "awx")
QUESTION_KEYS = {"question_name", "question_description", "variable", "type", "required", "default", "choices", "min",
                 "max", "new_question"}
# AWX's JobTemplateSurveySpec.ALLOWED_TYPES: the type a default must have per question type.
DEFAULT_TYPES = {"text": str, "textarea": str, "password": str, "multiplechoice": str, "multiselect": str,
                 "integer": int, "float": (int, float)}
JINJA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
JINJA_EXPR = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)


def load(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def known_variables():
    """Variable names the collection reads."""
    known = set()
    for path in sorted(glob.glob("roles/*/meta/argument_specs.yml")):
        for entry in (load(path).get("argument_specs") or {}).values():
            known.update((entry.get("options") or {}).keys())
    for path in sorted(glob.glob("playbooks/*.yml") + glob.glob("roles/*/defaults/main.yml")):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        for match in JINJA_EXPR.finditer(text):
            known.update(JINJA_NAME.findall(match.group(1) or match.group(2)))
    return known


def survey_errors(spec, known):
    """AWX's survey rules (awx/api/views JobTemplateSurveySpec._validate_spec_data), plus bounds and known variables."""
    errors = []
    if not isinstance(spec, list) or not spec:
        return ["the survey has no questions"]
    seen = set()
    for index, question in enumerate(spec):
        where = "question %d (%s)" % (index, question.get("variable") if isinstance(question, dict) else question)
        if not isinstance(question, dict):
            errors.append("%s: not a mapping" % where)
            continue
        unknown_keys = set(question) - QUESTION_KEYS
        if unknown_keys:
            errors.append("%s: unknown keys %s" % (where, sorted(unknown_keys)))
        for key in ("type", "question_name", "variable"):
            if not isinstance(question.get(key), str) or not question.get(key):
                errors.append("%s: %s must be a non-empty string" % (where, key))
        if not isinstance(question.get("required"), bool):
            errors.append("%s: required must be true or false" % where)
        variable, qtype = question.get("variable"), question.get("type")
        if variable in seen:
            errors.append("%s: variable asked twice" % where)
        seen.add(variable)
        if variable not in known:
            errors.append("%s: %s is not a variable of a role or playbook of the collection" % (where, variable))
        if qtype not in DEFAULT_TYPES:
            errors.append("%s: unknown type %r" % (where, qtype))
            continue
        default = question.get("default")
        has_default = "default" in question and default != ""
        if has_default and (isinstance(default, bool) or not isinstance(default, DEFAULT_TYPES[qtype])):
            errors.append("%s: default %r is not of type %s" % (where, default, qtype))
        for key in ("min", "max"):
            if key in question and (isinstance(question[key], bool) or not isinstance(question[key], int)):
                errors.append("%s: %s must be an integer" % (where, key))
        low, high = question.get("min"), question.get("max")
        if qtype in ("multiplechoice", "multiselect"):
            choices = question.get("choices")
            if isinstance(choices, str):
                choices = [choice for choice in choices.splitlines() if choice.strip()]
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
                errors.append("%s: choices must be a non-empty list of strings" % where)
                continue
            if has_default and isinstance(default, str):
                defaults = [item for item in default.splitlines() if item.strip()]
                if qtype == "multiplechoice" and len(defaults) > 1:
                    errors.append("%s: a multiple choice question has one default" % where)
                if any(item not in choices for item in defaults):
                    errors.append("%s: default %r is not among the choices %s" % (where, default, choices))
        elif has_default and qtype in ("integer", "float") and isinstance(default, (int, float)):
            if (low is not None and default < low) or (high is not None and default > high):
                errors.append("%s: default %r outside [%s, %s]" % (where, default, low, high))
        elif has_default and isinstance(default, str):
            if (low is not None and len(default) < low) or (high is not None and len(default) > high):
                errors.append("%s: default length %d outside [%s, %s]" % (where, len(default), low, high))
    return errors


def module_node_options(awx_dir):
    """The workflow node options awx.awx's workflow_job_template documents, as nested dicts (None = a leaf)."""
    path = os.path.join(awx_dir, "plugins", "modules", "workflow_job_template.py")
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    match = re.search(r"DOCUMENTATION = r?'''(.*?)'''", source, re.S)
    if not match:
        raise SystemExit("no DOCUMENTATION in %s" % path)

    def tree(options):
        return {name: tree(spec["suboptions"]) if spec.get("suboptions") else None for name, spec in options.items()}

    return tree(yaml.safe_load(match.group(1))["options"]["workflow_nodes"]["suboptions"])


def option_errors(value, options, where):
    errors = []
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, dict):
            continue
        for key, sub in item.items():
            if key not in options:
                errors.append("%s: %s is not an option awx.awx documents (%s)" % (where, key, ", ".join(sorted(options))))
            elif options[key] is not None:
                errors.extend(option_errors(sub, options[key], "%s.%s" % (where, key)))
    return errors


def main(argv):
    if len(argv) != 2:
        raise SystemExit(__doc__)
    awx_dir = argv[1]
    controller = load(os.path.join(AWX_DIR, "vars", "controller.yml"))
    templates = load(os.path.join(AWX_DIR, "vars", "templates.yml"))
    plays = load(os.path.join(AWX_DIR, "configure.yml"))
    known = known_variables()
    checks = []

    job_templates = {entry["playbook"]: entry for entry in templates["kubepki_awx_job_templates"]}
    top_level = {os.path.basename(path) for path in glob.glob("*.yml")} - {"galaxy.yml"}
    checks.append(("every top-level playbook has a job template and every job template a top-level playbook",
                   ["no job template for %s" % name for name in sorted(top_level - set(job_templates))]
                   + ["job template for %s, which is not a top-level playbook" % name
                      for name in sorted(set(job_templates) - top_level)]))
    for playbook, entry in sorted(job_templates.items()):
        checks.append(("survey of the job template for %s" % playbook, survey_errors(entry.get("survey"), known)))
    checks.append(("survey of the workflow", survey_errors(templates["kubepki_awx_workflow_survey"], known)))

    tasks = [task for play in plays for task in play.get("tasks", [])]
    workflow = [task["awx.awx.workflow_job_template"] for task in tasks if "awx.awx.workflow_job_template" in task]
    if len(workflow) != 1:
        raise SystemExit("configure.yml: expected one awx.awx.workflow_job_template task, found %d" % len(workflow))
    nodes = workflow[0]["workflow_nodes"]
    errors = option_errors(nodes, module_node_options(awx_dir), "workflow_nodes")
    identifiers = [node["identifier"] for node in nodes]
    if len(set(identifiers)) != len(identifiers):
        errors.append("node identifiers repeat: %s" % identifiers)
    prefix = "{{ kubepki_awx_prefix }} "
    for node in nodes:
        where = "node %s" % node["identifier"]
        for relation, targets in (node.get("related") or {}).items():
            for target in targets:
                if target["identifier"] not in identifiers:
                    errors.append("%s: %s names no node: %s" % (where, relation, target["identifier"]))
        template = node["unified_job_template"]
        if template["type"] != "job_template":
            continue
        name = template["name"]
        playbook = name[len(prefix):] + ".yml" if name.startswith(prefix) else None
        entry = job_templates.get(playbook)
        if entry is None:
            errors.append("%s: %s is not a job template configure.yml creates" % (where, name))
            continue
        if node.get("job_type") and not entry.get("ask_job_type_on_launch"):
            errors.append("%s: sets job_type, which the job template for %s does not prompt for" % (where, playbook))
        asked = {question["variable"] for question in entry.get("survey", [])}
        for variable in node.get("extra_data") or {}:
            if variable not in asked and not entry.get("ask_variables_on_launch"):
                errors.append("%s: extra_data %s is neither in the survey of %s nor prompted for" % (where, variable, playbook))
    checks.append(("workflow nodes (options awx.awx documents, job templates, links, prompts)", errors))

    secrets = [key for key, value in controller.items()
               if re.search(r"password|token|key_data", key) and isinstance(value, str) and "lookup(" not in value and value]
    checks.append(("vars/controller.yml holds no secret value", ["%s has a value" % key for key in secrets]))

    failed = 0
    for name, errors in checks:
        print("%s: %s" % ("FAIL" if errors else "ok", name))
        for error in errors:
            print("    " + error)
        failed += bool(errors)
    print("awx config: %d checks passed, %d failed" % (len(checks) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
