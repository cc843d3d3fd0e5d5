# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared fixtures of the engine unit tests."""

from __future__ import annotations

import pytest

from ansible_collections.kubepki.certs.tests.unit.plugins.module_utils.kubeadm_tree import make_kubeadm_tree


@pytest.fixture()
def node(tmp_path):
    """A kubeadm tree (see kubeadm_tree.py): base, pki, cas, layout, backup (a path not yet there)."""
    return make_kubeadm_tree(tmp_path)
