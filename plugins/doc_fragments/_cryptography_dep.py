# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # Modules that read or build certificates and keys with the cryptography library. What a module writes is
    # told by kubepki.certs._file_writes, which only the modules that write files extend.
    DOCUMENTATION = r"""
options: {}
requirements:
  - cryptography >= 38.0 on the managed node
"""
