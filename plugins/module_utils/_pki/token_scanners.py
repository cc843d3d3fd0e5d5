# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Scanners: where a join token (or a reference to one) sits in a file, as raw offsets.

One scanner per kind of location a k3s / RKE2 node keeps a token in: the config YAML (and its drop-ins),
an env file, a systemd unit, a token file. Rewriting is textual: a scanner finds the raw span of a token
value and only the ``K10<hash>::`` prefix of that span is replaced later, so every other byte of the file
(comments, order, quoting, escapes inside the credentials, line endings) stays as it was.

Files are read as bytes and scanned as text decoded with ``surrogateescape`` (:func:`decode_text`), so
every byte survives the round trip. No scanner puts a value into an exception message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError

KINDS = ("config", "env", "unit", "token_file")


def decode_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def encode_text(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Occurrence:
    """One token value (or a reference to one) found in a file.

    ``start``/``end`` are offsets of the value's raw text; ``value`` is the decoded value; ``raw_prefix`` is
    how many leading raw characters equal the decoded value's (no escape or quote inside them): a rewrite
    of the ``K10<hash>::`` prefix needs all of the prefix there.
    """

    key: str
    role: str                  # "token" or "agent-token"
    line: int
    start: int
    end: int
    value: str = field(repr=False)
    reference: str | None = None   # "file" or "variable"
    raw_prefix: int = 0        # number of leading raw characters equal to the decoded value's


CONFIG_TOKEN_KEYS = {"token": "token", "agent-token": "agent-token"}
CONFIG_FILE_KEYS = {"token-file": "token", "agent-token-file": "agent-token"}
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
    """Decode a YAML single-quoted scalar starting at ``content[start] == "'"``; return (value, end).

    The only escape is a doubled quote (``''`` stands for one ``'``).
    """
    pieces = []
    index = start + 1
    while True:
        close = content.find("'", index)
        if close < 0:
            raise _unsupported(path, line, key, "is a single-quoted value continued on the next line")
        pieces.append(content[index:close])
        if content[close + 1:close + 2] != "'":
            return "".join(pieces), close + 1
        pieces.append("'")
        index = close + 2


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
        if name not in CONFIG_TOKEN_KEYS and name not in CONFIG_FILE_KEYS:
            continue
        role = CONFIG_TOKEN_KEYS.get(name) or CONFIG_FILE_KEYS[name]
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
            reference="file" if name in CONFIG_FILE_KEYS else None, raw_prefix=_common_prefix(raw, value)))
    return found


def env_var_roles(token_env_vars) -> dict:
    """``{VAR: role}`` for the token variables, plus their ``_FILE`` reference variants."""
    roles = {}
    for var in token_env_vars:
        role = "agent-token" if var.endswith("_AGENT_TOKEN") else "token"
        roles[var] = role
    return roles


def _token_variable(key: str, roles: dict):
    """(role, reference) of an environment variable: a token variable itself (reference None), or its ``_FILE``
    variant naming a file that holds the token (reference "file"); None for any other variable."""
    if key in roles:
        return roles[key], None
    if key.endswith("_FILE") and key[:-5] in roles:
        return roles[key[:-5]], "file"
    return None


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
        named = _token_variable(key, roles)
        if named is None:
            continue
        role, reference = named
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
                named = _token_variable(key, roles)
                if named is None:
                    continue
                role, reference = named
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
