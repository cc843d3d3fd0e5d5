#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup
short_description: Back up PKI directories and token files before a change
version_added: 0.2.0
description:
  - Copies every file under O(paths) (directories recursively, symlinks resolved) to O(dest) at its absolute path,
    so C(/var/lib/rancher/k3s/server/tls/server-ca.key) lands in C(<dest>/var/lib/rancher/k3s/server/tls/server-ca.key).
  - Directories are created with mode C(0700); files keep their mode; every file is written atomically.
  - Reruns into the same O(dest) change nothing when the copies are already identical.
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  paths:
    description: Files and directories to back up. Missing ones are reported and skipped.
    type: list
    elements: path
    required: true
  dest:
    description: The backup directory, for example C(/var/lib/kubepki/backup/<rotation id>).
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Back up the tls directory and the token files
  kubepki.certs.backup:
    paths:
      - /var/lib/rancher/k3s/server/tls
      - /etc/rancher/k3s/config.yaml
    dest: /var/lib/kubepki/backup/20261122T120000Z
"""

RETURN = r"""
dest:
  description: The backup directory.
  returned: always
  type: str
files:
  description: Number of files in the backup.
  returned: always
  type: int
copied:
  description: Number of files copied by this run.
  returned: always
  type: int
missing:
  description: Paths that did not exist.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PRIVATE_DIR_MODE,
    ensure_dir,
    pending_backup,
    plan_backup,
    write_backup,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import run_engine


def main():
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type="list", elements="path", required=True),
            dest=dict(type="path", required=True),
        ),
        supports_check_mode=True,
    )
    paths, dest = module.params["paths"], module.params["dest"].rstrip("/")
    missing = [path for path in paths if not os.path.exists(path)]
    pairs = plan_backup(paths, dest)
    pending = run_engine(module, pending_backup, pairs)
    if pending and not module.check_mode:
        run_engine(module, ensure_dir, dest, mode=PRIVATE_DIR_MODE)  # the backup root is private, whatever sits below
        run_engine(module, write_backup, pending)
    module.exit_json(changed=bool(pending), dest=dest, files=len(pairs), copied=len(pending), missing=missing)


if __name__ == "__main__":
    main()
