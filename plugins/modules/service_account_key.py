#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: service_account_key
short_description: Rotate the service-account signing key while keeping the previous keys for verification
version_added: 0.1.0
description:
  - Writes a key file whose B(first) key is new and which then holds the current keys, so the apiserver signs new
    tokens with the new key and still verifies tokens signed with the kept ones. This is the file k3s and RKE2
    C(certificate rotate-ca) expect (it refuses a C(service.key) that lacks the current first key).
  - For C(kubeadm), O(dest) receives the new C(sa.key) alone and a C(sa.pub) beside it receives the public keys of
    the new key and of the kept keys (read from the C(sa.pub) beside O(path), plus the current signing key).
  - Idempotent. When O(dest) already holds a new key followed by the current keys, nothing changes.
  - O(path) is only read, unless O(in_place=true) and O(dest) equals O(path); then a backup
    C(<file>.<UTC time>.bak) is written first, and every run adds one more key.
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
  - kubepki.certs._cryptography_dep
  - kubepki.certs._file_writes
  - kubepki.certs._file_writes.private_keys
attributes:
  diff_mode:
    details:
      - The diff names the files and the public-key fingerprints, never key material.
options:
  path:
    description:
      - The current key file. Defaults to the distribution's live one (C(service.key) in the tls directory, or
        kubeadm's C(sa.key)), under O(data_dir) when given.
    type: path
  data_dir:
    description: Overrides the distribution's data directory when O(path) is derived from the layout.
    type: path
  dest:
    description: The file to write, normally in a staging directory. Exactly one of O(dest) and O(staging_dir).
    type: path
  staging_dir:
    description:
      - k3s and RKE2. The staging tree for C(certificate rotate-ca); the key goes into its tls directory, and
        RV(staging_tree) returns the tree's paths (its C(data_dir) is what C(rotate-ca --path) takes).
    type: path
  distribution:
    description: The file layout to follow.
    type: str
    required: true
    choices: [k3s, rke2, kubeadm]
  keep:
    description:
      - How many of the current keys to keep after the new one, first ones first. Default all, at most 20.
      - Must be at least 1, because the current signing key must keep verifying the tokens it issued.
    type: int
  key_type:
    description: Type of the new key. RSA 2048 is what k3s and kubeadm generate.
    type: str
    default: rsa-2048
    choices: [ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096]
  key_format:
    description: C(traditional) (PKCS#1 / SEC1) or C(pkcs8) for the new key. Kept keys keep their bytes.
    type: str
    default: traditional
    choices: [traditional, pkcs8]
  in_place:
    description: Allow O(dest) to be O(path). The current file is backed up first. Not idempotent.
    type: bool
    default: false
seealso:
  - module: kubepki.certs.ca_chain
"""

EXAMPLES = r"""
- name: Stage a rotated service.key for k3s certificate rotate-ca
  kubepki.certs.service_account_key:
    staging_dir: /var/lib/kubepki/rotate-service-key
    distribution: k3s
  register: staged

- name: Load it (only the service key is staged)
  ansible.builtin.command:
    argv: [k3s, certificate, rotate-ca, --path, "{{ staged.staging_tree.data_dir }}"]
  when: staged.files | length > 0

- name: kubeadm, keep only the two most recent previous keys
  kubepki.certs.service_account_key:
    path: /etc/kubernetes/pki/sa.key
    dest: /root/sa-rotation/sa.key
    distribution: kubeadm
    keep: 2
"""

RETURN = r"""
path:
  description: The current key file that was read.
  returned: always
  type: str
dest:
  description: The file written (or that would be written).
  returned: always
  type: str
files:
  description: Files written by this run (C(dest), and C(sa.pub) for kubeadm); empty when nothing changed.
  returned: always
  type: list
  elements: str
signing_key_fingerprint:
  description: SHA-256 of the new signing key's SubjectPublicKeyInfo (hex).
  returned: always
  type: str
kept_key_fingerprints:
  description: SHA-256 fingerprints of the kept verification keys, in file order.
  returned: always
  type: list
  elements: str
key_count:
  description: Number of keys in the result (new plus kept).
  returned: always
  type: int
dropped_key_count:
  description: Current keys not kept because of O(keep).
  returned: always
  type: int
staging_tree:
  description: The staging tree's paths (C(root), C(data_dir), C(tls_dir), C(state_file)).
  returned: when O(staging_dir) is given
  type: dict
  sample: {"root": "/var/lib/kubepki/rotate-service-key", "data_dir": "/var/lib/kubepki/rotate-service-key/server",
           "tls_dir": "/var/lib/kubepki/rotate-service-key/server/tls",
           "state_file": "/var/lib/kubepki/rotate-service-key/state.json"}
backup_file:
  description: The backup of O(path) made before an in-place rewrite.
  returned: when in_place rewrote the file
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import KEY_FORMATS, KEY_TYPES
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import (
    ROTATE_CA_DISTRIBUTIONS,
    SERVICE_KEY_DISTRIBUTIONS,
    get_layout,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import require_cryptography, run_engine
from ansible_collections.kubepki.certs.plugins.module_utils._pki.service_keys import (
    ServiceKeyRequest,
    apply_service_key_plan,
    plan_diff,
    plan_report,
    plan_service_key_rotation,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.trees import staging_tree


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            data_dir=dict(type="path"),
            dest=dict(type="path"),
            staging_dir=dict(type="path"),
            distribution=dict(type="str", required=True, choices=list(SERVICE_KEY_DISTRIBUTIONS)),
            keep=dict(type="int", no_log=False),
            key_type=dict(type="str", default="rsa-2048", choices=list(KEY_TYPES), no_log=False),
            key_format=dict(type="str", default="traditional", choices=list(KEY_FORMATS), no_log=False),
            in_place=dict(type="bool", default=False),
        ),
        required_one_of=[("dest", "staging_dir")],
        mutually_exclusive=[("dest", "staging_dir")],
        supports_check_mode=True,
    )
    require_cryptography(module)
    params = dict(module.params)
    layout = run_engine(module, get_layout, params["distribution"], data_dir=params.pop("data_dir"))
    params["path"] = params["path"] or layout.tls_path(layout.service_key)
    tree = None
    staging_dir = params.pop("staging_dir")
    if staging_dir:
        if params["distribution"] not in ROTATE_CA_DISTRIBUTIONS:
            module.fail_json(msg="staging_dir is a rotate-ca staging tree (%s); give dest for %s"
                             % (", ".join(ROTATE_CA_DISTRIBUTIONS), params["distribution"]))
        tree = staging_tree(staging_dir)
        params["dest"] = tree.file(layout.service_key)
    plan = run_engine(module, plan_service_key_rotation, ServiceKeyRequest(**params))
    result = plan_report(plan)
    if tree is not None:
        result["staging_tree"] = tree.as_dict()
    if module._diff and plan.changed:
        result["diff"] = plan_diff(plan)  # before writing: it reads what the disk holds now
    if plan.changed and not module.check_mode:
        backup = run_engine(module, apply_service_key_plan, plan)
        if backup:
            result["backup_file"] = backup
    module.exit_json(changed=plan.changed, **result)


if __name__ == "__main__":
    main()
