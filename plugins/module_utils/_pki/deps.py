# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Guarded import of ``cryptography``; callers report a missing library at the module edge."""

from __future__ import annotations

import traceback

MINIMUM_CRYPTOGRAPHY_VERSION = "38.0"

try:
    import cryptography
    from cryptography import x509  # noqa: F401  pylint: disable=unused-import
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_VERSION = None
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_VERSION = cryptography.__version__
    CRYPTOGRAPHY_IMPORT_ERROR = None


def _version_tuple(version: str) -> tuple:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def cryptography_problem() -> str | None:
    """Return why the installed cryptography cannot be used, or None when it can."""
    if not HAS_CRYPTOGRAPHY:
        return "missing"
    if _version_tuple(CRYPTOGRAPHY_VERSION) < _version_tuple(MINIMUM_CRYPTOGRAPHY_VERSION):
        return "cryptography %s is installed, %s or newer is required" % (
            CRYPTOGRAPHY_VERSION, MINIMUM_CRYPTOGRAPHY_VERSION)
    return None
