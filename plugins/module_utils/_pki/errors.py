# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The few error types the engine raises; the module edge turns them into fail_json."""

from __future__ import annotations


class PKIError(Exception):
    """Base class. ``path`` names the file concerned when there is one."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message


class InvalidInputError(PKIError):
    """A file or parameter cannot be parsed or is not what it must be (malformed PEM, wrong type)."""


class KeyMismatchError(PKIError):
    """A private key does not belong to the certificate it must sign with."""


class ChainError(PKIError):
    """A certificate does not chain to the CA it must chain to."""


class ExistingFileConflict(PKIError):
    """A file already exists with content that does not satisfy the request and ``force`` is off."""


class WriteError(PKIError):
    """A file could not be written."""


class LayoutError(PKIError):
    """Unknown distribution or a path the layout table does not know."""
