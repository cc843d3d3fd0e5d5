# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The two path conventions of a rotation, spelled here and nowhere else.

Staging tree: ``<staging_dir>/server`` is what ``<k3s|rke2> certificate rotate-ca --path`` takes; the set
itself lies in ``<staging_dir>/server/tls`` (upstream's layout under a data dir), ``state.json`` beside
``server``.

Backup tree: ``<backup_dir>/<rotation id>`` holds the copy of every live file at its absolute path
(``/var/lib/rancher/k3s/server/tls/server-ca.key`` -> ``<backup_dir>/<id>/var/lib/rancher/k3s/server/tls/server-ca.key``),
so a restore needs nothing but the tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError

STAGING_DATA_SUBDIR = "server"
STAGING_TLS_SUBDIR = "tls"
STATE_FILE = "state.json"


@dataclass(frozen=True)
class StagingTree:
    """Paths of one staging tree (nothing is created here).

    ``given_data_dir`` keeps a rotate-ca ``--path`` a caller named directly (any name), so it is not re-derived."""

    root: str
    given_data_dir: str = ""

    @property
    def data_dir(self) -> str:
        """What ``certificate rotate-ca --path`` takes."""
        return self.given_data_dir or os.path.join(self.root, STAGING_DATA_SUBDIR)

    @property
    def tls_dir(self) -> str:
        return os.path.join(self.data_dir, STAGING_TLS_SUBDIR)

    @property
    def state_file(self) -> str:
        return os.path.join(self.root, STATE_FILE)

    def file(self, relative: str) -> str:
        """A file of the staged set, ``relative`` to the tls dir (``server-ca.crt``, ``etcd/peer-ca.key``)."""
        return os.path.join(self.tls_dir, relative)

    def as_dict(self) -> dict:
        return {"root": self.root, "data_dir": self.data_dir, "tls_dir": self.tls_dir, "state_file": self.state_file}


def staging_tree(staging_dir: str) -> StagingTree:
    return StagingTree(os.path.normpath(staging_dir))


def staging_tree_of_data_dir(data_dir: str) -> StagingTree:
    """The tree whose ``data_dir`` (the rotate-ca ``--path``) is ``data_dir``, whatever its name."""
    data_dir = os.path.normpath(data_dir)
    return StagingTree(os.path.dirname(data_dir), data_dir)


def check_staging_tree(current_path: str, tree: StagingTree) -> str:
    """The tree's tls dir; refuse one that is, contains or lies inside the live tls dir ``current_path``."""
    live = os.path.realpath(current_path)
    staged = os.path.realpath(tree.tls_dir)
    if staged == live or staged.startswith(live + os.sep) or live.startswith(staged + os.sep):
        raise InvalidInputError("staging directory %s: its tls dir (%s) is, contains or lies inside the live tls "
                                "directory %s; stage outside it (k3s reconciles that directory from its datastore)"
                                % (tree.data_dir, staged, live), path=tree.data_dir)
    return tree.tls_dir


def check_staging_path(current_path: str, staging_path: str) -> str:
    """:func:`check_staging_tree` for a rotate-ca ``--path`` (``staging_path``) named directly."""
    return check_staging_tree(current_path, staging_tree_of_data_dir(staging_path))


@dataclass(frozen=True)
class BackupTree:
    """The backup of one rotation on one node: ``<backup_dir>/<rotation id>``."""

    root: str

    def copy_of(self, live_path: str) -> str:
        """Where the copy of ``live_path`` lies (its absolute path under the tree, symlinks not resolved)."""
        return self.root + os.path.abspath(live_path)

    def live_path_of(self, copy_path: str) -> str:
        """The live file a copy in this tree stands for."""
        relative = os.path.relpath(copy_path, self.root)
        if relative.startswith(".."):
            raise InvalidInputError("%s is not inside the backup tree %s" % (copy_path, self.root), path=copy_path)
        return "/" + relative


def backup_tree(backup_dir: str, rotation_id: str = "") -> BackupTree:
    """``<backup_dir>/<rotation_id>``; without an id, ``backup_dir`` is the tree itself."""
    root = os.path.normpath(backup_dir)
    if rotation_id:
        if "/" in rotation_id or rotation_id in (".", ".."):
            raise InvalidInputError("rotation id %r is not a single path component" % rotation_id)
        root = os.path.join(root, rotation_id)
    return BackupTree(root)
