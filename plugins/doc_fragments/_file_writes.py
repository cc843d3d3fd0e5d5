# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # Modules that write files on the node (files.atomic_write). Each of them plans its writes first, so it runs in
    # check mode and reports a diff; the module adds the details of its diff.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Every file is written to a temporary file in the same directory, synced and renamed into place, so a reader
    never sees a half-written file; a replaced file keeps its owner and group when the module runs as root.
"""

    # Modules that generate private keys (keys.serialize_private_key, files.PRIVATE_FILE_MODE).
    PRIVATE_KEYS = r"""
options: {}
notes:
  - Private keys are written in PEM without a passphrase, with mode C(0600).
"""
