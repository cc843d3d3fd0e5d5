# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # Filters that judge the node_info results of the servers and agents groups of a rotation.
    DOCUMENTATION = r"""
options:
  servers:
    description: Host names of the servers group, in restart order.
    type: list
    elements: str
    required: true
  agents:
    description: Host names of the agents group.
    type: list
    elements: str
    default: []
"""
