# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The staging tree and backup tree conventions (trees.py), the one place that spells them."""

from __future__ import annotations

import os

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import trees
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError


def test_staging_tree_paths():
    tree = trees.staging_tree("/var/lib/kubepki/rotate-ca/")
    assert tree.as_dict() == {"root": "/var/lib/kubepki/rotate-ca", "data_dir": "/var/lib/kubepki/rotate-ca/server",
                              "tls_dir": "/var/lib/kubepki/rotate-ca/server/tls",
                              "state_file": "/var/lib/kubepki/rotate-ca/state.json"}
    assert tree.file("etcd/peer-ca.key") == "/var/lib/kubepki/rotate-ca/server/tls/etcd/peer-ca.key"


def test_tree_of_a_data_dir_keeps_its_name():
    """rotate-ca's --path may have any name: the tree built around it must not rename it."""
    tree = trees.staging_tree_of_data_dir("/opt/stage/my-set/")
    assert tree.data_dir == "/opt/stage/my-set"
    assert tree.tls_dir == "/opt/stage/my-set/tls"
    assert tree.root == "/opt/stage"
    assert trees.staging_tree_of_data_dir(trees.staging_tree("/x").data_dir) == trees.StagingTree("/x", "/x/server")


@pytest.mark.parametrize("data_dir", ["live", "live/tls", "live/tls/x"])
def test_staging_inside_or_around_the_live_dir_is_refused(tmp_path, data_dir):
    live = tmp_path / "live" / "tls"
    live.mkdir(parents=True)
    # <data_dir>/tls is the live dir itself, or lies inside it
    with pytest.raises(InvalidInputError, match="live tls directory"):
        trees.check_staging_path(str(live), str(tmp_path / data_dir))


def test_staging_containing_the_live_dir_is_refused(tmp_path):
    live = tmp_path / "stage" / "server" / "tls" / "inner"
    live.mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="contains or lies inside"):
        trees.check_staging_tree(str(live), trees.staging_tree(str(tmp_path / "stage")))


def test_staging_beside_the_live_dir_is_accepted(tmp_path):
    live = tmp_path / "k3s" / "server" / "tls"
    live.mkdir(parents=True)
    tree = trees.staging_tree(str(tmp_path / "stage"))
    assert trees.check_staging_tree(str(live), tree) == str(tmp_path / "stage" / "server" / "tls")
    assert trees.check_staging_path(str(live), tree.data_dir) == tree.tls_dir


def test_backup_tree_round_trip():
    tree = trees.backup_tree("/var/lib/kubepki/backup/", "20261122T120000Z")
    assert tree.root == "/var/lib/kubepki/backup/20261122T120000Z"
    copy = tree.copy_of("/var/lib/rancher/k3s/server/tls/server-ca.key")
    assert copy == "/var/lib/kubepki/backup/20261122T120000Z/var/lib/rancher/k3s/server/tls/server-ca.key"
    assert tree.live_path_of(copy) == "/var/lib/rancher/k3s/server/tls/server-ca.key"
    assert trees.backup_tree("/b/id").copy_of("/etc/rancher/k3s/config.yaml") == "/b/id/etc/rancher/k3s/config.yaml"


def test_relative_live_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert trees.backup_tree("/b", "id").copy_of("config.yaml") == "/b/id" + os.path.join(str(tmp_path), "config.yaml")


@pytest.mark.parametrize("bad", ["a/b", ".", ".."])
def test_rotation_id_must_be_one_path_component(bad):
    with pytest.raises(InvalidInputError, match="single path component"):
        trees.backup_tree("/b", bad)


def test_copy_outside_the_tree_is_refused():
    with pytest.raises(InvalidInputError, match="not inside the backup tree"):
        trees.backup_tree("/b", "id").live_path_of("/b/other/etc/x")
