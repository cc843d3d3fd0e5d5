# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the kubeadm suite: the real kubeadm, the /etc/kubernetes mount point, the init node cp1."""

from __future__ import annotations

import os
import time

import pytest

from kubeadm_node import KUBERNETES_DIR, build_kubeadm, kubeadm_run, new_node


@pytest.fixture(scope="session")
def kubeadm():
    return build_kubeadm()


@pytest.fixture(scope="session")
def mount_point():
    """/etc/kubernetes must exist as a mount point; created here when missing and removed again (it stays empty:
    every node binds its own directory over it, in its own mount namespace)."""
    created = not os.path.isdir(KUBERNETES_DIR)
    if created:
        os.makedirs(KUBERNETES_DIR)
    try:
        yield KUBERNETES_DIR
    finally:
        if created:
            os.rmdir(KUBERNETES_DIR)


@pytest.fixture(scope="session")
def cp1(kubeadm, mount_point, tmp_path_factory):
    """The init node: every certificate and kubeconfig from kubeadm init, then apiserver renewed 2 s later (so
    expiry dates differ to the second). Tests copy it before changing anything."""
    node = new_node(kubeadm, str(tmp_path_factory.mktemp("cp1")), "cp1", "10.0.0.1")
    time.sleep(2)
    kubeadm_run(kubeadm, node["dir"], "certs", "renew", "apiserver", "--config", node["config"])
    return node
