#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup
short_description: Back up PKI directories and token files before a change, or restore them from that backup
version_added: 0.2.0
description:
  - O(state=present) copies every file under O(paths) (directories recursively, symlinks resolved) into the backup
    tree at its absolute path, so C(/var/lib/rancher/k3s/server/tls/server-ca.key) lands in
    C(<tree>/var/lib/rancher/k3s/server/tls/server-ca.key). The tree is O(dest), or O(backup_dir)C(/)O(rotation_id).
  - Directories are created with mode C(0700); files keep their mode; every file is written atomically.
  - Reruns into the same tree change nothing when the copies are already identical.
  - O(state=restored) writes each file of O(paths) (symlinks resolved) back from its copy in the tree when they
    differ, keeping the live file's mode and owner, then reads it back and fails unless its SHA-256 equals the
    copy's. It fails when the tree does not exist, and lists the paths without a copy in RV(not_in_backup).
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
  - kubepki.certs._file_writes
attributes:
  diff_mode:
    details:
      - The diff names each copy (or, for O(state=restored), each live file) that would be created or updated,
        never its content.
options:
  state:
    description: Back up (C(present)) or restore (C(restored)).
    type: str
    choices: [present, restored]
    default: present
  paths:
    description:
      - Files and directories to back up (missing ones are reported and skipped), or files to restore.
    type: list
    elements: path
    required: true
  dest:
    description: The backup tree, for example the RV(kubepki.certs.ca_rotation#module:backup_tree) of a rotation.
    type: path
  backup_dir:
    description: With O(rotation_id), the tree is their join (what M(kubepki.certs.ca_rotation) returns as its backup tree).
    type: path
  rotation_id:
    description: The rotation whose tree under O(backup_dir) is meant.
    type: str
"""

EXAMPLES = r"""
- name: Back up the tls directory and the token files
  kubepki.certs.backup:
    paths:
      - /var/lib/rancher/k3s/server/tls
      - /etc/rancher/k3s/config.yaml
    dest: /var/lib/kubepki/backup/20261122T120000Z

- name: Restore the token files from the backup of that rotation
  kubepki.certs.backup:
    state: restored
    paths: [/etc/rancher/k3s/config.yaml]
    backup_dir: /var/lib/kubepki/backup
    rotation_id: 20261122T120000Z
  register: restore
"""

RETURN = r"""
dest:
  description: The backup tree.
  returned: always
  type: str
files:
  description: Number of files in the backup (O(state=present)) or restored from it (O(state=restored)).
  returned: always
  type: int
copied:
  description: Number of files copied by this run (into the tree, or back from it).
  returned: always
  type: int
missing:
  description: O(state=present) paths that did not exist.
  returned: always
  type: list
  elements: str
restored:
  description:
    - O(state=restored) per file with a copy, its live C(path), its C(copy), C(state) (C(restored) or C(unchanged))
      and the C(sha256) the live file now has (read back, equal to the copy's).
  returned: always
  type: list
  elements: dict
not_in_backup:
  description: O(state=restored) paths that have no copy in the tree (left as they are).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.backups import (
    apply_restore,
    backup_diff,
    pending_backup,
    plan_backup,
    plan_restore,
    restore_diff,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import PRIVATE_DIR_MODE, ensure_dir, write_backup
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import run_engine
from ansible_collections.kubepki.certs.plugins.module_utils._pki.trees import backup_tree


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "restored"]),
            paths=dict(type="list", elements="path", required=True),
            dest=dict(type="path"),
            backup_dir=dict(type="path"),
            rotation_id=dict(type="str"),
        ),
        required_one_of=[("dest", "backup_dir")],
        mutually_exclusive=[("dest", "backup_dir")],
        required_together=[("backup_dir", "rotation_id")],
        supports_check_mode=True,
    )
    params = module.params
    tree = run_engine(module, backup_tree, params["dest"] or params["backup_dir"], params["rotation_id"] or "")
    paths = params["paths"]
    if params["state"] == "restored":
        items, not_in_backup = run_engine(module, plan_restore, paths, tree)
        pending = [item for item in items if item.state != "unchanged"]
        diff = {"diff": restore_diff(tree, items)} if module._diff and pending else {}
        if pending and not module.check_mode:
            run_engine(module, apply_restore, pending)
        module.exit_json(changed=bool(pending), dest=tree.root, files=len(items), copied=len(pending), missing=[],
                         restored=[item.as_dict() for item in items], not_in_backup=not_in_backup, **diff)
    missing = [path for path in paths if not os.path.exists(path)]
    pairs = plan_backup(paths, tree)
    pending = run_engine(module, pending_backup, pairs)
    diff = {"diff": backup_diff(tree, pending)} if module._diff and pending else {}
    if pending and not module.check_mode:
        run_engine(module, ensure_dir, tree.root, mode=PRIVATE_DIR_MODE)  # the tree is private, whatever sits below
        run_engine(module, write_backup, pending)
    module.exit_json(changed=bool(pending), dest=tree.root, files=len(pairs), copied=len(pending), missing=missing,
                     restored=[], not_in_backup=[], **diff)


if __name__ == "__main__":
    main()
