# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""k3s / RKE2 join tokens: parse, re-hash, and rewrite them in place wherever a node keeps them.

A token is ``K10<hashCA>::<user>:<password>`` (or ``K10<hashCA>::<id>.<secret>``, a bootstrap token,
or a bare password with no CA hash). After a CA rotation that changes hashCA, every *pinned* token
must carry the new hash with its own credentials unchanged (reference §6, §11 pitfall 2).

Rewriting is textual: each scanner finds the raw span of a token value in a file and only the
``K10<hash>::`` prefix of that span is replaced, so every other byte of the file (comments, order,
quoting, escapes inside the credentials, line endings) stays as it was.

Nothing here ever puts a token or a password into an exception message, a ``repr`` or a report.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import time
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PRIVATE_FILE_MODE,
    atomic_write,
    read_bytes,
    write_backup,
)

try:
    import yaml
except ImportError:  # PyYAML is optional on the node: without it the YAML cross-check is skipped
    HAS_YAML = False
else:
    HAS_YAML = True

TOKEN_PREFIX = "K10"
CA_HASH_LENGTH = 64
HASH_PREFIX_LENGTH = 12
REDACTED = "<redacted>"
KINDS = ("config", "env", "unit", "token_file")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BOOTSTRAP = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")

# Statuses reported per location.
CHANGED = "changed"
UNCHANGED = "unchanged"
BARE = "bare"
FILE_REFERENCE = "file-reference"
VARIABLE_REFERENCE = "variable-reference"
NO_TOKEN = "no-token"
MISSING = "missing"


# --------------------------------------------------------------------------------------------------
# The token itself


@dataclass(frozen=True)
class JoinToken:
    """A parsed join token, the way k3s ``clientaccess.parseToken`` reads it.

    ``form``: ``secure`` (``K10<hash>::…``), ``unpinned`` (``K10`` without a hash) or ``bare`` (no
    ``K10`` prefix). ``prefix_length`` is how many leading characters are the ``K10<hash>::`` part
    (0 for a bare token): the only part a rewrite replaces.
    """

    ca_hash: str
    user: str | None
    secret: str = field(repr=False)
    form: str
    bootstrap: bool
    prefix_length: int
    credentials: str = field(repr=False)

    @property
    def pinned(self) -> bool:
        return bool(self.ca_hash)

    @property
    def password(self) -> str:
        """The password (or the bootstrap token ``id.secret``): what authenticates the node."""
        return self.secret

    def redacted(self, *, hash_length: int = HASH_PREFIX_LENGTH) -> str:
        """A printable form: hash prefix and user, never the password."""
        if self.bootstrap:
            creds = "%s.%s" % (self.secret.split(".", 1)[0], REDACTED)
        elif self.form == "bare":
            creds = REDACTED
        else:
            creds = "%s:%s" % (self.user, REDACTED)
        if self.form == "bare":
            return creds
        shown = self.ca_hash[:hash_length] + ("..." if len(self.ca_hash) > hash_length else "")
        return "%s%s::%s" % (TOKEN_PREFIX, shown, creds)


def parse_token(text: str) -> JoinToken:
    """Parse ``text`` like k3s does; raise InvalidInputError (without the value) when k3s would refuse it."""
    if not text:
        raise InvalidInputError("token must not be empty")
    if not text.startswith(TOKEN_PREFIX):
        if _BOOTSTRAP.match(text):
            return JoinToken(ca_hash="", user=None, secret=text, form="bare", bootstrap=True,
                             prefix_length=0, credentials=text)
        return JoinToken(ca_hash="", user="", secret=text, form="bare", bootstrap=False,
                         prefix_length=0, credentials=text)
    rest = text[len(TOKEN_PREFIX):]
    if "::" in rest:
        ca_hash, creds = rest.split("::", 1)
        if ca_hash and len(ca_hash) != CA_HASH_LENGTH:
            raise InvalidInputError("invalid token CA hash length (%d characters; must be 0 or %d)"
                                    % (len(ca_hash), CA_HASH_LENGTH))
        prefix_length = len(TOKEN_PREFIX) + len(ca_hash) + 2
    else:
        ca_hash, creds = "", rest
        prefix_length = len(TOKEN_PREFIX)
    form = "secure" if ca_hash else "unpinned"
    if _BOOTSTRAP.match(creds):
        return JoinToken(ca_hash=ca_hash, user=None, secret=creds, form=form, bootstrap=True,
                         prefix_length=prefix_length, credentials=creds)
    parts = creds.split(":", 1)
    if len(parts) != 2 or not parts[1]:
        raise InvalidInputError("invalid token format (expected K10<hash>::<user>:<password>, "
                                "K10<hash>::<id>.<secret> or a bare password)")
    return JoinToken(ca_hash=ca_hash, user=parts[0], secret=parts[1], form=form, bootstrap=False,
                     prefix_length=prefix_length, credentials=creds)


def format_token(*, ca_hash: str, user: str | None, password: str) -> str:
    """``K10<hash>::<user>:<password>``; ``user=None`` for a bootstrap token ``id.secret``."""
    check_ca_hash(ca_hash)
    creds = password if user is None else "%s:%s" % (user, password)
    return "%s%s::%s" % (TOKEN_PREFIX, ca_hash, creds)


def check_ca_hash(ca_hash: str) -> str:
    """Return ``ca_hash`` lower-cased; raise unless it is 64 hex digits."""
    value = (ca_hash or "").strip().lower()
    if not _HEX64.match(value):
        raise InvalidInputError("a CA hash must be 64 hex digits (SHA-256), got %d characters" % len(value))
    return value


def new_prefix(token: JoinToken, new_hash: str, *, pin_bare: bool = False, bare_user: str = "server") -> str | None:
    """The text that replaces ``token``'s first ``prefix_length`` characters, or None to leave it alone.

    A pinned token keeps its credentials and gets ``new_hash``. A token without a CA hash is left
    alone (k3s skips the CA check for it, so a rotation does not break it) unless ``pin_bare``; then
    it becomes ``K10<new_hash>::<bare_user>:<password>`` (bare) or ``K10<new_hash>::<its creds>``.
    k3s overrides the user part when it authenticates (``node`` on agents, ``server`` on servers),
    so the user written for a bare password is cosmetic.
    """
    new_hash = check_ca_hash(new_hash)
    if token.pinned:
        if token.ca_hash == new_hash:
            return None
    elif not pin_bare:
        return None
    prefix = "%s%s::" % (TOKEN_PREFIX, new_hash)
    if token.form == "bare" and not token.bootstrap:
        prefix += "%s:" % bare_user
    return prefix


def retoken(token: str, new_hash: str, *, pin_bare: bool = False, bare_user: str = "server") -> str:
    """``token`` with ``new_hash``: same user and password. Tokens without a CA hash stay as they are
    unless ``pin_bare``."""
    parsed = parse_token(token)
    prefix = new_prefix(parsed, new_hash, pin_bare=pin_bare, bare_user=bare_user)
    if prefix is None:
        return token
    return prefix + token[parsed.prefix_length:]


def ca_hash_of_file(path: str) -> str:
    """k3s hashCA of the CA bundle in ``path`` (``chain.hash_ca``), naming the file on error."""
    from ansible_collections.kubepki.certs.plugins.module_utils._pki.chain import hash_ca

    data = read_bytes(path, what="CA bundle")
    try:
        return hash_ca(data)
    except InvalidInputError as exc:
        raise InvalidInputError("%s: %s" % (path, exc.message), path=path) from None


# --------------------------------------------------------------------------------------------------
# Scanners: where a value sits in a file, as raw offsets


@dataclass(frozen=True)
class Occurrence:
    """One token value (or a reference to one) found in a file.

    ``start``/``end`` are offsets of the value's raw text; ``value`` is the decoded value; for a pinned
    rewrite ``raw_prefix_ok`` says the raw text starts with the same characters as the decoded value for
    as long as a prefix may be (no escape or quote inside it).
    """

    key: str
    role: str                  # "token" or "agent-token"
    line: int
    start: int
    end: int
    value: str = field(repr=False)
    reference: str | None = None   # "file" or "variable"
    raw_prefix: int = 0        # number of leading raw characters equal to the decoded value's


_CONFIG_TOKEN_KEYS = {"token": "token", "agent-token": "agent-token"}
_CONFIG_FILE_KEYS = {"token-file": "token", "agent-token-file": "agent-token"}
_CONFIG_KEY = re.compile(r"""^(?P<q>["']?)(?P<name>[A-Za-z0-9_.+-]+)(?P=q)[ \t]*:(?=[ \t]|$)""")
_DQ_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f",
               "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0",
               "L": "\u2028", "P": "\u2029"}
_DQ_HEX = {"x": 2, "u": 4, "U": 8}


def _lines(text: str):
    """(line number, start offset, content without its line ending) for every line of ``text``."""
    number, offset = 0, 0
    for match in re.finditer(r"[^\n]*\n|[^\n]+$", text):
        number += 1
        raw = match.group(0)
        content = raw[:-1] if raw.endswith("\n") else raw
        if content.endswith("\r"):
            content = content[:-1]
        yield number, offset, content
        offset = match.end()


def _unsupported(path: str, line: int, key: str, what: str) -> InvalidInputError:
    return InvalidInputError("%s line %d: %s %s; write the token on one line as a plain or quoted value"
                             % (path, line, key, what), path=path)


def _common_prefix(raw: str, decoded: str) -> int:
    count = 0
    for left, right in zip(raw, decoded):
        if left != right:
            break
        count += 1
    return count


def _yaml_double_quoted(content: str, start: int, *, path: str, line: int, key: str):
    """Decode a YAML double-quoted scalar starting at ``content[start] == '"'``; return (value, end)."""
    out = []
    index = start + 1
    while index < len(content):
        char = content[index]
        if char == '"':
            return "".join(out), index + 1
        if char == "\\":
            index += 1
            if index >= len(content):
                raise _unsupported(path, line, key, "is a double-quoted value continued on the next line")
            esc = content[index]
            if esc in _DQ_ESCAPES:
                out.append(_DQ_ESCAPES[esc])
            elif esc in _DQ_HEX:
                digits = content[index + 1:index + 1 + _DQ_HEX[esc]]
                if len(digits) != _DQ_HEX[esc] or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise _unsupported(path, line, key, "has an invalid escape in a double-quoted value")
                out.append(chr(int(digits, 16)))
                index += _DQ_HEX[esc]
            else:
                raise _unsupported(path, line, key, "has an invalid escape in a double-quoted value")
        else:
            out.append(char)
        index += 1
    raise _unsupported(path, line, key, "is a double-quoted value continued on the next line")


def _yaml_single_quoted(content: str, start: int, *, path: str, line: int, key: str):
    out = []
    index = start + 1
    while index < len(content):
        char = content[index]
        if char == "'":
            if content[index + 1:index + 2] == "'":
                out.append("'")
                index += 2
                continue
            return "".join(out), index + 1
        out.append(char)
        index += 1
    raise _unsupported(path, line, key, "is a single-quoted value continued on the next line")


def _continues(lines: list, position: int) -> bool:
    """Whether the line after ``position`` continues a top-level value (indented, not blank or a comment)."""
    for _number, _offset, content in lines[position + 1:]:
        stripped = content.strip()
        if not stripped or stripped.startswith("#"):
            continue
        return content[:1] in (" ", "\t")
    return False


def scan_config(text: str, *, path: str = "config") -> list:
    """Top-level ``token:``/``agent-token:`` (and ``*-file:`` references) of a k3s/RKE2 config YAML."""
    found = []
    lines = list(_lines(text))
    for position, (number, offset, content) in enumerate(lines):
        match = _CONFIG_KEY.match(content)
        if not match:
            continue
        name = match.group("name")
        if name not in _CONFIG_TOKEN_KEYS and name not in _CONFIG_FILE_KEYS:
            continue
        role = _CONFIG_TOKEN_KEYS.get(name) or _CONFIG_FILE_KEYS[name]
        index = match.end()
        while index < len(content) and content[index] in " \t":
            index += 1
        first = content[index:index + 1]
        if first in ("", "#") or re.match(r"^(~|null|Null|NULL)[ \t]*([ \t]#.*)?$", content[index:]):
            if first in ("", "#") and _continues(lines, position):
                raise _unsupported(path, number, name + ":", "has its value on the following lines")
            continue  # null: no token here
        if first in ("|", ">"):
            raise _unsupported(path, number, name + ":", "is a block scalar")
        if first in ("&", "*", "!"):
            raise _unsupported(path, number, name + ":", "uses a YAML anchor, alias or tag")
        if first in ("[", "{", "@", "`", "%"):
            raise _unsupported(path, number, name + ":", "is not a plain string")
        if first in ('"', "'"):
            reader = _yaml_double_quoted if first == '"' else _yaml_single_quoted
            value, close = reader(content, index, path=path, line=number, key=name + ":")
            trailer = content[close:]
            if trailer.strip() and not re.match(r"^[ \t]+#", trailer):
                raise _unsupported(path, number, name + ":", "has text after its closing quote")
            raw_start, raw_end = index + 1, close - 1
        else:
            comment = re.search(r"[ \t]#", content[index:])
            raw_end = index + comment.start() if comment else len(content)
            while raw_end > index and content[raw_end - 1] in " \t":
                raw_end -= 1
            value = content[index:raw_end]
            raw_start = index
            if _continues(lines, position):
                raise _unsupported(path, number, name + ":", "is a plain value continued on the next line")
        raw = content[raw_start:raw_end]
        found.append(Occurrence(
            key=name, role=role, line=number, start=offset + raw_start, end=offset + raw_end, value=value,
            reference="file" if name in _CONFIG_FILE_KEYS else None, raw_prefix=_common_prefix(raw, value)))
    return found


def env_var_roles(token_env_vars) -> dict:
    """``{VAR: role}`` for the token variables, plus their ``_FILE`` reference variants."""
    roles = {}
    for var in token_env_vars:
        role = "agent-token" if var.endswith("_AGENT_TOKEN") else "token"
        roles[var] = role
    return roles


_ENV_LINE = re.compile(r"^[ \t]*(?:export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*")


def scan_env(text: str, *, token_env_vars, path: str = "env file") -> list:
    """``<PROGRAM>_TOKEN=…`` lines of an env file (systemd EnvironmentFile or sourced shell file)."""
    roles = env_var_roles(token_env_vars)
    found = []
    for number, offset, content in _lines(text):
        match = _ENV_LINE.match(content)
        if not match:
            continue
        key = match.group("key")
        if key in roles:
            role, reference = roles[key], None
        elif key.endswith("_FILE") and key[:-5] in roles:
            role, reference = roles[key[:-5]], "file"
        else:
            continue
        index = match.end()
        first = content[index:index + 1]
        if first == '"':
            out, cursor, raw_start = [], index + 1, index + 1
            while True:
                if cursor >= len(content):
                    raise _unsupported(path, number, key, "is a quoted value continued on the next line")
                char = content[cursor]
                if char == '"':
                    break
                if char == "\\" and cursor + 1 < len(content) and content[cursor + 1] in '"\\$`':
                    out.append(content[cursor + 1])
                    cursor += 2
                    continue
                if char == "\\" and cursor + 1 >= len(content):
                    raise _unsupported(path, number, key, "is a quoted value continued on the next line")
                if char in "$`":
                    reference = reference or "variable"
                out.append(char)
                cursor += 1
            value, raw_end, trailer = "".join(out), cursor, content[cursor + 1:]
        elif first == "'":
            close = content.find("'", index + 1)
            if close < 0:
                raise _unsupported(path, number, key, "is a quoted value continued on the next line")
            raw_start, raw_end = index + 1, close
            value, trailer = content[raw_start:raw_end], content[close + 1:]
        else:
            raw_start, raw_end = index, len(content)
            while raw_end > raw_start and content[raw_end - 1] in " \t":
                raw_end -= 1
            value, trailer = content[raw_start:raw_end], ""
            if "$" in value or "`" in value:
                reference = reference or "variable"
            elif value.endswith("\\"):
                raise _unsupported(path, number, key, "is continued on the next line")
            elif re.search(r"[ \t]", value):
                raise _unsupported(path, number, key, "is an unquoted value with spaces")
        if trailer.strip() and not re.match(r"^[ \t]+#", trailer):
            raise _unsupported(path, number, key, "has text after its closing quote")
        if not value and reference is None:
            continue  # KEY= : no token
        raw = content[raw_start:raw_end]
        found.append(Occurrence(key=key, role=role, line=number, start=offset + raw_start,
                                end=offset + raw_end, value=value, reference=reference,
                                raw_prefix=_common_prefix(raw, value)))
    return found


_UNIT_DIRECTIVE = re.compile(r"^[ \t]*(?P<name>ExecStart|Environment)[ \t]*=[ \t]*")
_FLAG = re.compile(r"^--?(?P<name>token|t|agent-token|token-file|agent-token-file)(?:=(?P<value>.*))?$", re.S)
_FLAG_ROLES = {"token": ("token", None), "t": ("token", None), "agent-token": ("agent-token", None),
               "token-file": ("token", "file"), "agent-token-file": ("agent-token", "file")}
_C_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "s": " ",
              "\\": "\\", '"': '"', "'": "'"}


def _logical_line(text: str, start: int):
    """Characters of a unit-file value from ``start`` with ``\\``-newline continuations joined.

    Returns ``(chars, positions, next_offset)``: each decoded character with its raw offset (a
    continuation becomes one space at the backslash's offset); comment lines inside a continuation
    are skipped as systemd does.
    """
    chars, positions = [], []
    index = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            rest = text[index + 1:index + 3]
            skip = 2 if rest.startswith("\n") else 3 if rest == "\r\n" else 0
            if skip:
                chars.append(" ")
                positions.append(index)
                index += skip
                while True:  # comment lines inside a continuation
                    match = re.match(r"[ \t]*[#;][^\n]*\n", text[index:])
                    if not match:
                        break
                    index += match.end()
                continue
        if char == "\n" or (char == "\r" and text[index + 1:index + 2] == "\n"):
            break
        chars.append(char)
        positions.append(index)
        index += 1
    return chars, positions, index


def _unit_words(chars: list, positions: list, *, path: str, line: int):
    """Split a logical line into words with systemd quoting; each word: (decoded, raw offsets)."""
    words = []
    index = 0
    while index < len(chars):
        if chars[index] in " \t":
            index += 1
            continue
        decoded, offsets, quote = [], [], None
        while index < len(chars):
            char = chars[index]
            if quote is None and char in " \t":
                break
            if char in "\"'" and (quote is None or quote == char):
                quote = None if quote else char
                index += 1
                continue
            if char == "%" and index + 1 < len(chars) and chars[index + 1] == "%":  # systemd specifier escape
                decoded.append("%")
                offsets.append(positions[index])
                index += 2
                continue
            if char == "\\" and index + 1 < len(chars):
                esc = chars[index + 1]
                digits = "".join(chars[index + 2:index + 4])
                if esc == "x" and len(digits) == 2 and all(c in "0123456789abcdefABCDEF" for c in digits):
                    decoded.append(chr(int(digits, 16)))
                    offsets.append(positions[index])
                    index += 4
                    continue
                if esc in _C_ESCAPES:
                    decoded.append(_C_ESCAPES[esc])
                    offsets.append(positions[index])
                    index += 2
                    continue
            decoded.append(char)
            offsets.append(positions[index])
            index += 1
        if quote is not None:
            raise InvalidInputError("%s line %d: unbalanced quote in a unit directive" % (path, line), path=path)
        words.append(("".join(decoded), offsets))
    return words


def _raw_prefix(text: str, value: str, offsets: list) -> int:
    """Leading characters of ``value`` whose raw text is the same characters, contiguous."""
    count = 0
    for index, char in enumerate(value):
        if offsets[index] != offsets[0] + index or text[offsets[index]] != char:
            break
        count += 1
    return count


def _word_occurrence(text, key, role, reference, line, value, offsets):
    if not offsets:
        return None
    if reference is None and value.startswith("$"):
        reference = "variable"
    start = offsets[0]
    end = offsets[-1] + 1
    return Occurrence(key=key, role=role, line=line, start=start, end=end, value=value, reference=reference,
                      raw_prefix=_raw_prefix(text, value, offsets))


def _line_of(line_starts: list, position: int) -> int:
    return sum(1 for start in line_starts if start <= position)


def scan_unit(text: str, *, token_env_vars=(), path: str = "unit file") -> list:
    """``--token``/``-t``/``--agent-token`` (and ``*-file``) in ExecStart, token variables in Environment=."""
    roles = env_var_roles(token_env_vars)
    found = []
    line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
    consumed_until = 0
    for number, offset, content in _lines(text):
        if offset < consumed_until:
            continue
        match = _UNIT_DIRECTIVE.match(content)
        if not match:
            continue
        chars, positions, consumed_until = _logical_line(text, offset + match.end())
        words = _unit_words(chars, positions, path=path, line=number)
        if match.group("name") == "Environment":
            for decoded, offsets in words:
                key, sep, value = decoded.partition("=")
                if not sep:
                    continue
                if key in roles:
                    role, reference = roles[key], None
                elif key.endswith("_FILE") and key[:-5] in roles:
                    role, reference = roles[key[:-5]], "file"
                else:
                    continue
                line = _line_of(line_starts, offsets[len(key)])
                occurrence = _word_occurrence(text, key, role, reference, line, value, offsets[len(key) + 1:])
                if occurrence:
                    found.append(occurrence)
            continue
        index = 1  # words[0] is the binary
        while index < len(words):
            decoded, offsets = words[index]
            flag = _FLAG.match(decoded)
            if decoded == "--":
                break
            if not flag:
                index += 1
                continue
            role, reference = _FLAG_ROLES[flag.group("name")]
            key = decoded.split("=", 1)[0]
            if flag.group("value") is not None:
                skip = len(key) + 1
                value, value_offsets = decoded[skip:], offsets[skip:]
                index += 1
            elif index + 1 < len(words):
                value, value_offsets = words[index + 1]
                index += 2
            else:
                raise InvalidInputError("%s line %d: %s has no value" % (path, number, key), path=path)
            occurrence = _word_occurrence(text, key, role, reference, _line_of(line_starts, value_offsets[0]) if value_offsets
                                          else number, value, value_offsets)
            if occurrence:
                found.append(occurrence)
    return found


def scan_token_file(text: str, *, path: str = "token file") -> list:
    """A token file: one token on one line; the trailing newline (if any) is kept."""
    body = text.rstrip("\r\n")
    if not body.strip():
        return []
    if "\n" in body:
        raise InvalidInputError("%s holds more than one line; a token file holds one token" % path, path=path)
    role = "agent-token" if os.path.basename(path).startswith("agent-token") else "token"
    return [Occurrence(key="file", role=role, line=1, start=0, end=len(body), value=body,
                       raw_prefix=len(body))]


def scan(kind: str, text: str, *, path: str, token_env_vars=()) -> list:
    if kind == "config":
        return scan_config(text, path=path)
    if kind == "env":
        return scan_env(text, token_env_vars=token_env_vars, path=path)
    if kind == "unit":
        return scan_unit(text, token_env_vars=token_env_vars, path=path)
    if kind == "token_file":
        return scan_token_file(text, path=path)
    raise InvalidInputError("unknown location kind %r; known: %s" % (kind, ", ".join(KINDS)))


# --------------------------------------------------------------------------------------------------
# Planning a rewrite


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


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


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
    for name in list(_CONFIG_TOKEN_KEYS) + list(_CONFIG_FILE_KEYS):
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


def _plan_file(path: str, kind: str, *, new_hash: str, pin_bare: bool, token_env_vars, discovered: bool) -> FilePlan | None:
    realpath = os.path.realpath(path)
    try:
        info = os.stat(realpath)
    except FileNotFoundError:
        if discovered:
            return None
        return FilePlan(path=path, realpath=realpath, kind=kind, exists=False,
                        locations=[Location(path=path, kind=kind, status=MISSING)])
    except OSError as exc:
        raise InvalidInputError("%s cannot be read: %s" % (path, exc.strerror), path=path) from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInputError("%s is not a regular file" % path, path=path)
    before = read_bytes(realpath, what="%s file" % kind.replace("_", " "))
    text = _decode(before)
    occurrences = scan(kind, text, path=path, token_env_vars=token_env_vars)
    plan = FilePlan(path=path, realpath=realpath, kind=kind, exists=True, before=before, after=before,
                    mode=stat.S_IMODE(info.st_mode))
    shown_file = realpath if realpath != os.path.abspath(path) else None
    if kind == "config" and not occurrences:
        check_config_rewrite(path, text, text, occurrences, {})
    if not occurrences:
        if discovered:
            return None
        plan.locations.append(Location(path=path, kind=kind, status=NO_TOKEN, file=shown_file))
        return plan
    edits, replacements = [], {}
    for occurrence in occurrences:
        location = Location(path=path, kind=kind, status=UNCHANGED, key=occurrence.key, role=occurrence.role,
                            line=occurrence.line, file=shown_file)
        plan.locations.append(location)
        if occurrence.reference == "file":
            location.status, location.reference = FILE_REFERENCE, occurrence.value
            continue
        if occurrence.reference == "variable":
            location.status, location.reference = VARIABLE_REFERENCE, occurrence.value
            continue
        try:
            token = parse_token(occurrence.value)
        except InvalidInputError as exc:
            raise InvalidInputError("%s line %d: %s holds a token k3s cannot parse: %s"
                                    % (path, occurrence.line, occurrence.key, exc.message), path=path) from None
        plan.secrets.extend([occurrence.value, token.secret])
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
            continue
        if occurrence.raw_prefix < token.prefix_length:
            raise InvalidInputError("%s line %d: the K10 prefix of %s is quoted or escaped in a way this module "
                                    "does not rewrite; write it literally" % (path, occurrence.line, occurrence.key),
                                    path=path)
        new_value = prefix + occurrence.value[token.prefix_length:]
        plan.secrets.append(new_value)
        location.status = CHANGED
        location.new_hash = _short(new_hash)
        location.redacted_after = parse_token(new_value).redacted()
        edits.append((occurrence.start, occurrence.start + token.prefix_length, prefix))
        replacements[occurrence.key] = new_value
    after_text = text
    for start, end, replacement in sorted(edits, reverse=True):
        after_text = after_text[:start] + replacement + after_text[end:]
    if kind == "config":
        config_replacements = {}
        for occurrence in occurrences:  # YAML keeps the last of duplicate keys
            if occurrence.key in replacements:
                config_replacements[occurrence.key] = replacements[occurrence.key]
        check_config_rewrite(path, text, after_text, occurrences, config_replacements)
    plan.after = _encode(after_text)
    return plan


def expand_paths(paths) -> list:
    """Paths in order, glob patterns expanded (sorted); a pattern matching nothing yields nothing."""
    result = []
    for path in paths or ():
        if glob.has_magic(path):
            result.extend(sorted(glob.glob(path)))
        else:
            result.append(path)
    return result


def discover_locations(layout, *, root: str = "") -> list:
    """(kind, path) candidates from the layout table: config files (with drop-ins), env files, unit files,
    the server token files. ``root`` prefixes every path (tests)."""
    def rooted(path):
        return root.rstrip("/") + path if root else path

    candidates = [("config", p) for p in expand_paths([rooted(p) for p in layout.config_files])]
    candidates += [("env", rooted(p)) for p in layout.env_files]
    candidates += [("unit", rooted(p)) for p in layout.unit_files]
    candidates += [("token_file", rooted(p)) for p in (layout.token_file, layout.agent_token_file) if p]
    return candidates


def token_files_on_node(layout, *, root: str = "") -> list:
    """Read-only preflight: the layout's locations that exist and hold a token (or a reference to one).

    Each entry: ``path``, ``kind``, ``keys`` (as written) and ``problem`` (why the file cannot be rewritten,
    or None). Never a value.
    """
    found, seen = [], set()
    for kind, path in discover_locations(layout, root=root):
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        try:
            text = _decode(read_bytes(real, what="%s file" % kind.replace("_", " ")))
            occurrences = scan(kind, text, path=path, token_env_vars=layout.token_env_vars)
            problem = None
        except InvalidInputError as exc:
            occurrences, problem = [], exc.message
        if occurrences or problem:
            found.append({"path": path, "realpath": real, "kind": kind, "keys": [o.key for o in occurrences],
                          "problem": problem})
    return found


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

    With ``backup_root`` the copy lands at ``<backup_root><absolute path>`` (the backup module's layout, which
    rollback restores from); otherwise next to the file as ``<file>.<UTC time>.bak``."""
    suffix = backup_suffix or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backups = []
    for file_plan in plan.files:
        if not file_plan.changed:
            continue
        if backup_root:
            target = backup_root.rstrip("/") + file_plan.realpath
            write_backup([(target, file_plan.before, PRIVATE_FILE_MODE)])
            backups.append(target)
        elif backup:
            target = "%s.%s.bak" % (file_plan.realpath, suffix)
            atomic_write(target, file_plan.before, mode=PRIVATE_FILE_MODE)
            backups.append(target)
        atomic_write(file_plan.realpath, file_plan.after, mode=file_plan.mode)
    return backups


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
    diffs = []
    for file_plan in plan.files:
        if not file_plan.changed:
            continue
        before, after = [], []
        for location in file_plan.locations:
            if location.status != CHANGED:
                continue
            before.append("line %d: %s: %s\n" % (location.line, location.key, location.redacted_before))
            after.append("line %d: %s: %s\n" % (location.line, location.key, location.redacted_after))
        diffs.append({"before_header": file_plan.path, "after_header": file_plan.path,
                      "before": "".join(before), "after": "".join(after)})
    return diffs
