# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
requirements:
  - cryptography >= 38.0 on the managed node
notes:
  - Private keys are written in PEM without a passphrase, mode C(0600), through a temporary file that is renamed
    into place, so a reader never sees a half-written file.
"""
