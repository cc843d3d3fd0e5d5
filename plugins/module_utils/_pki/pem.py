# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Splitting PEM text into typed blocks, in file order, without any crypto."""

from __future__ import annotations

import re

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----\r?\n?",
    re.DOTALL,
)

CERTIFICATE_LABELS = ("CERTIFICATE",)
PRIVATE_KEY_LABELS = ("RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY")
PUBLIC_KEY_LABELS = ("PUBLIC KEY", "RSA PUBLIC KEY")


def split_pem(data: bytes) -> list:
    """Return ``[(label, block_bytes), ...]`` for every PEM block, in order."""
    return [(m.group(1).decode("ascii"), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def blocks_with_labels(data: bytes, labels: tuple) -> list:
    return [block for label, block in split_pem(data) if label in labels]


def normalise_block(block: bytes) -> bytes:
    """A block with LF line ends and a final newline, as written by Go and OpenSSL."""
    text = block.replace(b"\r\n", b"\n")
    return text if text.endswith(b"\n") else text + b"\n"
