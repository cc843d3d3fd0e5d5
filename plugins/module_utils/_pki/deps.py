# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The one guarded import of ``cryptography``: the engine takes the names it uses from here, and a missing or too
old library is reported at the module edge (module_edge.require_cryptography), never as an ImportError."""

from __future__ import annotations

import traceback

MINIMUM_CRYPTOGRAPHY_VERSION = "38.0"

# pylint: disable=unused-import
try:
    import cryptography
    from cryptography import x509  # noqa: F401
    from cryptography.exceptions import InvalidSignature  # noqa: F401
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: F401
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa  # noqa: F401
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: F401
except ImportError:
    # the names exist either way, so importing the engine never fails; using it without the library is refused
    # at the module edge first
    x509 = InvalidSignature = hashes = serialization = ec = ed448 = ed25519 = padding = rsa = None
    ExtendedKeyUsageOID = NameOID = None
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_VERSION = None
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_VERSION = cryptography.__version__
    CRYPTOGRAPHY_IMPORT_ERROR = None
# pylint: enable=unused-import


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
