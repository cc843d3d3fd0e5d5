# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""k3s / RKE2 join tokens as text: parse, format, re-hash.

A token is ``K10<hashCA>::<user>:<password>`` (or ``K10<hashCA>::<id>.<secret>``, a bootstrap token,
or a bare password with no CA hash). After a CA rotation that changes hashCA, every *pinned* token
must carry the new hash with its own credentials unchanged (reference §6, §11 pitfall 2). Only the
``K10<hash>::`` prefix of a token is ever replaced.

Nothing here ever puts a token or a password into an exception message, a ``repr`` or a report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import read_bytes

TOKEN_PREFIX = "K10"
CA_HASH_LENGTH = 64
HASH_PREFIX_LENGTH = 12
REDACTED = "<redacted>"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BOOTSTRAP = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")


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
