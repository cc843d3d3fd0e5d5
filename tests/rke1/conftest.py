# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the RKE1 suite: clusters, rotations and an interrupted rotation written by rke's own Go code."""

from __future__ import annotations

import pytest

from rke1_fixtures import build_generator, new_cluster, rotated_copy


@pytest.fixture(scope="session")
def generator():
    return build_generator()


@pytest.fixture(scope="session")
def cluster(generator, tmp_path_factory):
    """After `rke up`: state file and every node's files."""
    return new_cluster(generator, str(tmp_path_factory.mktemp("rke1") / "up"))


@pytest.fixture(scope="session")
def plain_cluster(generator, tmp_path_factory):
    """After `rke up` without kubelet serving certificates."""
    return new_cluster(generator, str(tmp_path_factory.mktemp("rke1") / "plain"), kubelet_serving=False)


@pytest.fixture(scope="session")
def apiserver_rotated(generator, cluster, tmp_path_factory):
    """`rke cert rotate --service kube-apiserver` of ``cluster``."""
    return rotated_copy(generator, cluster, str(tmp_path_factory.mktemp("rke1") / "svc"), "-service", "kube-apiserver")


@pytest.fixture(scope="session")
def ca_rotated(generator, cluster, tmp_path_factory):
    """`rke cert rotate --rotate-ca` of ``cluster``."""
    return rotated_copy(generator, cluster, str(tmp_path_factory.mktemp("rke1") / "ca"), "-rotate-ca")


@pytest.fixture(scope="session")
def interrupted(generator, cluster, tmp_path_factory):
    """`rke cert rotate` of ``cluster`` stopped after writing the state file (new certificates in desiredState)."""
    return rotated_copy(generator, cluster, str(tmp_path_factory.mktemp("rke1") / "interrupted"), "-no-deploy")
