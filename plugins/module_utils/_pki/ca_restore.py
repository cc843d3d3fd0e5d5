# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Undo a CA rotation: the CA files of its backup tree, staged for ``certificate rotate-ca --force --path``.

The backed-up bundles and keys are staged as fresh files (k3s refuses a datastore copy older than the disk file)
beside a byte copy of the CURRENT service.key, so tokens signed since the rotation keep verifying. ``--force``
is needed because a default CA is a single self-signed certificate, which rotate-ca's checks refuse; the plan is
therefore ``disruptive``. The live tls directory and the backup tree are only read.
"""

from __future__ import annotations

import datetime
import os

from ansible_collections.kubepki.certs.plugins.module_utils._pki import certs as certs_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki.chain import hash_ca
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    read_bytes,
    read_if_exists,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import RANCHER_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rotation import (
    CARotation,
    RotationPlan,
    RotationRequest,
    StagedFile,
    request_tree,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.trees import backup_tree, check_staging_tree


def backed_up_tls_dir(request: RotationRequest) -> str:
    """The copy of the live tls dir in the rotation's backup tree; raises naming what is missing."""
    if not request.backup_dir or not request.rotation_id:
        raise InvalidInputError("mode restore needs backup_dir and rotation_id (the id the rotation printed)")
    tree = backup_tree(request.backup_dir, request.rotation_id)
    if not os.path.isdir(tree.root):
        raise InvalidInputError("no backup tree %s: nothing was changed (is backup_dir the one the rotation used, and "
                                "the rotation id right?)" % tree.root, path=tree.root)
    copy = tree.copy_of(request.current_path)
    if not os.path.isdir(copy):
        raise InvalidInputError("the backup tree %s holds no copy of %s (servers' tls dirs are backed up before the load); "
                                "restore on a server that was backed up" % (tree.root, request.current_path), path=copy)
    return copy


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def plan_ca_restore(request: RotationRequest, *, now: datetime.datetime | None = None) -> RotationPlan:
    """Stage the backed-up CAs (nothing when the live CAs already are them)."""
    if request.distribution not in RANCHER_DISTRIBUTIONS:
        raise InvalidInputError("ca_rotation supports k3s and rke2, not %r" % request.distribution)
    now = (now or certs_mod.utcnow()).replace(microsecond=0)
    layout = get_layout(request.distribution)
    tree = request_tree(request)
    staging_tls = check_staging_tree(request.current_path, tree)
    copy_dir = backed_up_tls_dir(request)
    files, cas = [], []
    backed_up, live = {}, {}
    for entry in layout.cas:
        backed_up[entry.name] = (read_bytes(os.path.join(copy_dir, entry.cert), what="backed-up %s bundle" % entry.name),
                                 read_bytes(os.path.join(copy_dir, entry.key), what="backed-up %s key" % entry.name))
        live[entry.name] = read_bytes(os.path.join(request.current_path, entry.cert), what="live %s bundle" % entry.name)
    already_loaded = all(live[name] == backed_up[name][0] for name in live)

    def stage(relative: str, content: bytes, secret: bool) -> None:
        # rotate-ca sends each file's mtime, and the servers refuse datastore files older than their disk files: a
        # staged copy left by an earlier rollback with the same bytes is written again unless newer than the live file
        staged = os.path.join(staging_tls, relative)
        existing = read_if_exists(staged)
        fresh = existing == content and _mtime(staged) > _mtime(os.path.join(request.current_path, relative))
        state = "unchanged" if fresh else ("created" if existing is None else "updated")
        files.append(StagedFile(relative, content, PRIVATE_FILE_MODE if secret else PUBLIC_FILE_MODE, state))

    for entry in layout.cas:
        bundle, key = backed_up[entry.name]
        if not already_loaded:
            stage(entry.cert, bundle, False)
            stage(entry.key, key, True)
        current = certs_mod.load_certificates(live[entry.name], source=os.path.join(request.current_path, entry.cert))
        restored = certs_mod.load_certificates(bundle, source=os.path.join(copy_dir, entry.cert))
        cas.append(CARotation(entry.name, "loaded" if already_loaded else "restore", current[0], restored[0], bundle))
    if not already_loaded:
        stage(layout.service_key, read_bytes(os.path.join(request.current_path, layout.service_key),
                                             what="current service key"), True)
    server = backed_up["server-ca"][0]
    return RotationPlan(request, staging_tls, files, cas, hash_ca(live["server-ca"], at=now), hash_ca(server, at=now),
                        already_loaded, server, [], tree)
