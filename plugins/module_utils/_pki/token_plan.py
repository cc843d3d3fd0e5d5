# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Rewriting the join tokens of a node after a CA rotation: plan (read, decide, build every new file in
memory, cross-check), then apply (backup, atomic write). The plan and its report hold no secret in a
``repr`` or a report; ``TokenPlan.secrets`` lists the values read so the module edge can mask them.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import Change, summary_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PRIVATE_FILE_MODE,
    atomic_write,
    read_bytes,
    write_backup,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.token_grammar import HASH_PREFIX_LENGTH, check_ca_hash, new_prefix, parse_token
from ansible_collections.kubepki.certs.plugins.module_utils._pki.token_locations import expand_paths
from ansible_collections.kubepki.certs.plugins.module_utils._pki.token_scanners import (
    CONFIG_FILE_KEYS,
    CONFIG_TOKEN_KEYS,
    decode_text,
    encode_text,
    scan,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.trees import backup_tree

try:
    import yaml
except ImportError:  # PyYAML is optional on the node: without it the YAML cross-check is skipped
    HAS_YAML = False
else:
    HAS_YAML = True

# Statuses reported per location.
CHANGED = "changed"
UNCHANGED = "unchanged"
BARE = "bare"
FILE_REFERENCE = "file-reference"
VARIABLE_REFERENCE = "variable-reference"
NO_TOKEN = "no-token"
MISSING = "missing"


@dataclass
class Location:
    """The report for one token value (or reference, or a file without one): no secret in it."""

    path: str
    kind: str
    status: str
    key: str | None = None
    role: str | None = None
    line: int | None = None
    form: str | None = None
    user: str | None = None
    old_hash: str | None = None
    new_hash: str | None = None
    password_group: int | None = None
    reference: str | None = None
    file: str | None = None
    bootstrap: bool | None = None
    secret: str | None = field(default=None, repr=False)   # for grouping only; never reported
    redacted_before: str | None = None
    redacted_after: str | None = None

    def report(self) -> dict:
        result = {"path": self.path, "kind": self.kind, "status": self.status}
        for name in ("key", "role", "line", "form", "bootstrap", "user", "old_hash", "new_hash",
                     "password_group", "reference", "file"):
            value = getattr(self, name)
            if value is not None:
                result[name] = value
        return result


@dataclass
class FilePlan:
    path: str
    realpath: str
    kind: str
    exists: bool
    before: bytes | None = field(default=None, repr=False)
    after: bytes | None = field(default=None, repr=False)
    mode: int | None = None
    locations: list = field(default_factory=list)
    secrets: list = field(default_factory=list, repr=False)

    @property
    def changed(self) -> bool:
        return self.exists and self.before != self.after


@dataclass
class TokenPlan:
    ca_hash: str
    files: list
    warnings: list

    @property
    def changed(self) -> bool:
        return any(f.changed for f in self.files)

    @property
    def secrets(self) -> list:
        """Every token and password value read (for the module edge to mask); never reported."""
        values = []
        for plan in self.files:
            values.extend(plan.secrets)
        return values


def _short(ca_hash: str) -> str:
    return ca_hash[:HASH_PREFIX_LENGTH]


def _yaml_problem_line(exc) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return " at line %d column %d" % (mark.line + 1, mark.column + 1)
    return ""


def _load_yaml(text: str, path: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # never the YAMLError text: its snippet can quote the token line
        raise InvalidInputError("%s cannot be parsed as YAML%s" % (path, _yaml_problem_line(exc)), path=path) from None


def check_config_rewrite(path: str, before: str, after: str, occurrences: list, replacements: dict) -> None:
    """Cross-check the textual scan with a YAML parser (when PyYAML is there).

    The parser must see the same top-level token keys and values the scanner found, and the rewritten
    text must parse to the same mapping with only those values replaced. ``replacements`` maps a key
    name to its new value.
    """
    if not HAS_YAML:
        return
    old = _load_yaml(before, path)
    if not isinstance(old, dict):
        if occurrences:
            raise InvalidInputError("%s: a token key was found but the file is not a YAML mapping" % path, path=path)
        return
    last = {}
    for occurrence in occurrences:
        last[occurrence.key] = occurrence
    for name in list(CONFIG_TOKEN_KEYS) + list(CONFIG_FILE_KEYS):
        if name in old and old[name] is not None and name not in last:
            raise InvalidInputError("%s: the YAML key %s: is written in a form this module cannot rewrite "
                                    "(flow mapping or multi-line); write it as one top-level line" % (path, name),
                                    path=path)
        if name in last and isinstance(old.get(name), str) and old[name] != last[name].value:
            raise InvalidInputError("%s line %d: the value of %s: reads differently as YAML than this module "
                                    "read it; write it as one plain or quoted line" % (path, last[name].line, name),
                                    path=path)
    if before == after:
        return
    new = _load_yaml(after, path)
    expected = dict(old)
    expected.update(replacements)
    if new != expected:
        raise InvalidInputError("%s: rewriting the token would change more than the token as YAML reads it; "
                                "nothing was written" % path, path=path)


def _stat_location(path: str):
    """``(realpath, stat result)`` of a location, or ``(realpath, None)`` when it does not exist."""
    realpath = os.path.realpath(path)
    try:
        info = os.stat(realpath)
    except FileNotFoundError:
        return realpath, None
    except OSError as exc:
        raise InvalidInputError("%s cannot be read: %s" % (path, exc.strerror), path=path) from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInputError("%s is not a regular file" % path, path=path)
    return realpath, info


def _plan_occurrence(occurrence, location: Location, *, path: str, new_hash: str, pin_bare: bool):
    """Fill ``location`` for one scanned value; return ``(edit, new value)`` when the value changes, else None.

    ``edit`` is ``(start, end, replacement)`` on the file text: only the ``K10<hash>::`` prefix is replaced.
    """
    if occurrence.reference == "file":
        location.status, location.reference = FILE_REFERENCE, occurrence.value
        return None
    if occurrence.reference == "variable":
        location.status, location.reference = VARIABLE_REFERENCE, occurrence.value
        return None
    try:
        token = parse_token(occurrence.value)
    except InvalidInputError as exc:
        raise InvalidInputError("%s line %d: %s holds a token k3s cannot parse: %s"
                                % (path, occurrence.line, occurrence.key, exc.message), path=path) from None
    location.secret = token.secret
    location.form = token.form
    location.bootstrap = token.bootstrap or None
    location.user = token.user or None
    location.old_hash = _short(token.ca_hash) if token.ca_hash else None
    location.redacted_before = token.redacted()
    bare_user = "node" if occurrence.role == "agent-token" else "server"
    prefix = new_prefix(token, new_hash, pin_bare=pin_bare, bare_user=bare_user)
    if prefix is None:
        location.status = UNCHANGED if token.pinned else BARE
        location.new_hash = location.old_hash
        location.redacted_after = location.redacted_before
        return None
    if occurrence.raw_prefix < token.prefix_length:
        raise InvalidInputError("%s line %d: the K10 prefix of %s is quoted or escaped in a way this module "
                                "does not rewrite; write it literally" % (path, occurrence.line, occurrence.key),
                                path=path)
    new_value = prefix + occurrence.value[token.prefix_length:]
    location.status = CHANGED
    location.new_hash = _short(new_hash)
    location.redacted_after = parse_token(new_value).redacted()
    return (occurrence.start, occurrence.start + token.prefix_length, prefix), new_value


def _apply_edits(text: str, edits: list) -> str:
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _plan_file(path: str, kind: str, *, new_hash: str, pin_bare: bool, token_env_vars, discovered: bool) -> FilePlan | None:
    realpath, info = _stat_location(path)
    if info is None:
        if discovered:
            return None
        return FilePlan(path=path, realpath=realpath, kind=kind, exists=False,
                        locations=[Location(path=path, kind=kind, status=MISSING)])
    before = read_bytes(realpath, what="%s file" % kind.replace("_", " "))
    text = decode_text(before)
    occurrences = scan(kind, text, path=path, token_env_vars=token_env_vars)
    plan = FilePlan(path=path, realpath=realpath, kind=kind, exists=True, before=before, after=before,
                    mode=stat.S_IMODE(info.st_mode))
    shown_file = realpath if realpath != os.path.abspath(path) else None
    if not occurrences:
        if kind == "config":
            check_config_rewrite(path, text, text, occurrences, {})
        if discovered:
            return None
        plan.locations.append(Location(path=path, kind=kind, status=NO_TOKEN, file=shown_file))
        return plan
    edits, replacements = [], {}
    for occurrence in occurrences:
        location = Location(path=path, kind=kind, status=UNCHANGED, key=occurrence.key, role=occurrence.role,
                            line=occurrence.line, file=shown_file)
        plan.locations.append(location)
        change = _plan_occurrence(occurrence, location, path=path, new_hash=new_hash, pin_bare=pin_bare)
        if location.secret is not None:
            plan.secrets.extend([occurrence.value, location.secret])
        if change is not None:
            edit, new_value = change
            plan.secrets.append(new_value)
            edits.append(edit)
            replacements[occurrence.key] = new_value  # YAML keeps the last of duplicate keys
    after_text = _apply_edits(text, edits)
    if kind == "config":
        check_config_rewrite(path, text, after_text, occurrences, replacements)
    plan.after = encode_text(after_text)
    return plan


def plan_join_tokens(*, new_hash: str, config_files=(), env_files=(), unit_files=(), token_files=(),
                     discovered=(), pin_bare: bool = False, token_env_vars=()) -> TokenPlan:
    """Plan the rewrite of every listed location (explicit lists first, then ``discovered`` (kind, path)
    pairs, which are kept only when they exist and hold a token). Each file is read once, by real path."""
    new_hash = check_ca_hash(new_hash)
    specs = [("config", p, False) for p in expand_paths(config_files)]
    specs += [("env", p, False) for p in env_files or ()]
    specs += [("unit", p, False) for p in unit_files or ()]
    specs += [("token_file", p, False) for p in token_files or ()]
    specs += [(kind, p, True) for kind, p in discovered]
    seen, files = set(), []
    for kind, path, is_discovered in specs:
        real = os.path.realpath(path)
        if real in seen:
            continue
        plan = _plan_file(path, kind, new_hash=new_hash, pin_bare=pin_bare, token_env_vars=token_env_vars,
                          discovered=is_discovered)
        if plan is None:
            continue
        seen.add(real)
        files.append(plan)
    return TokenPlan(ca_hash=new_hash, files=files, warnings=_group_passwords(files))


def _group_passwords(files: list) -> list:
    """Number the distinct passwords (1, 2, …) and warn when one role has more than one."""
    groups, per_role = {}, {}
    for plan in files:
        for location in plan.locations:
            if location.secret is None:
                continue
            location.password_group = groups.setdefault(location.secret, len(groups) + 1)
            per_role.setdefault(location.role, {}).setdefault(location.password_group, []).append(
                "%s:%s" % (location.path, location.line))
    warnings = []
    for role, by_group in sorted(per_role.items()):
        if len(by_group) > 1:
            warnings.append("the %s locations carry %d different passwords (%s); each location kept its own "
                            "password, but nodes only join with the cluster's %s password"
                            % (role, len(by_group), "; ".join("group %d: %s" % (g, ", ".join(places))
                                                              for g, places in sorted(by_group.items())), role))
    return warnings


def apply_token_plan(plan: TokenPlan, *, backup: bool = True, backup_suffix: str | None = None,
                     backup_root: str | None = None) -> list:
    """Write every changed file atomically with its mode (owner kept); back it up first. Returns backups.

    With ``backup_root`` every file of the plan that holds a token, changed or not, gets a copy where ``trees.BackupTree.copy_of`` puts
    it (the backup tree rollback restores from), unless one is there already: the first copy is the state before the
    rotation, and a rerun must not replace it with what the first run wrote. Otherwise a changed file is copied next
    to itself as ``<file>.<UTC time>.bak``."""
    suffix = backup_suffix or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backups = []
    for file_plan in plan.files:
        if backup_root and _holds_token(file_plan):
            target = backup_tree(backup_root).copy_of(file_plan.realpath)
            if not os.path.exists(target):
                write_backup([(target, file_plan.before, PRIVATE_FILE_MODE)])
                backups.append(target)
        if not file_plan.changed:
            continue
        if not backup_root and backup:
            target = "%s.%s.bak" % (file_plan.realpath, suffix)
            atomic_write(target, file_plan.before, mode=PRIVATE_FILE_MODE)
            backups.append(target)
        atomic_write(file_plan.realpath, file_plan.after, mode=file_plan.mode)
    return backups


def pending_backups(plan: TokenPlan, backup_root: str | None) -> list:
    """The copies ``apply_token_plan`` would add to the backup tree (none without ``backup_root``)."""
    if not backup_root:
        return []
    tree = backup_tree(backup_root)
    return [tree.copy_of(f.realpath) for f in plan.files
            if _holds_token(f) and not os.path.exists(tree.copy_of(f.realpath))]


def _holds_token(file_plan: FilePlan) -> bool:
    return file_plan.exists and any(location.status not in (MISSING, NO_TOKEN) for location in file_plan.locations)


def plan_report(plan: TokenPlan) -> dict:
    """Plain data for the module result: paths, kinds, statuses, users, hash prefixes. No secret."""
    locations = [location.report() for file_plan in plan.files for location in file_plan.locations]
    return {
        "ca_hash": plan.ca_hash,
        "locations": locations,
        "changed_files": [f.path for f in plan.files if f.changed],
        "daemon_reload_needed": any(f.changed and f.kind == "unit" for f in plan.files),
        "distinct_passwords": len({loc.secret for f in plan.files for loc in f.locations if loc.secret}),
        "file_references": sorted({loc.reference for f in plan.files for loc in f.locations
                                   if loc.status == FILE_REFERENCE}),
    }


def plan_diff(plan: TokenPlan) -> list:
    """Ansible diff entries: per changed file, the token lines as ``line N: key: <redacted token>``."""
    return [summary_diff(file_plan.path, (Change("line %d: %s" % (location.line, location.key),
                                                 location.redacted_before, location.redacted_after)
                                          for location in file_plan.locations if location.status == CHANGED))
            for file_plan in plan.files if file_plan.changed]
