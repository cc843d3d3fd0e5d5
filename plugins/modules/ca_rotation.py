#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ca_rotation
short_description: Stage a k3s or RKE2 CA rotation set for C(certificate rotate-ca)
version_added: 0.2.0
description:
  - Reads the live CA files of a k3s or RKE2 server and writes the rotation set into a staging tree, O(staging_dir)
    (or the directory O(staging_path) later passed to C(<k3s|rke2> certificate rotate-ca --path)). The module returns
    the tree's paths (RV(staging_tree)), so callers never spell them.
  - O(mode=cross_sign) (clusters on the default self-signed CAs, or any cluster whose CA keys are on the server)
    creates per CA a new self-signed root, the same root key cross-signed by the current CA, and a new cluster CA
    issued by the new root. The bundle is the new CA, the new root, the cross-signed root, then the current chain;
    the key file holds the new CA key then the new root key. It works on default clusters, on clusters already
    rotated this way, and on custom chains with RSA or EC keys in PKCS#1, SEC1 or PKCS#8.
  - O(mode=renew) (custom-CA clusters) issues new cluster CAs under the existing intermediate, or under a new
    intermediate when O(root_cert) and O(root_key) are given. The root stays, so the join token does not change.
  - O(mode=new_root) creates a fresh hierarchy. That is disruptive; k3s loads it only with C(--force).
  - O(mode=restore) undoes a rotation. It stages the CA bundles and keys of the rotation's backup tree
    (O(backup_dir)/O(rotation_id), as M(kubepki.certs.backup) wrote it) with a byte copy of the current
    C(service.key), so tokens signed since the rotation keep verifying. Loading it needs C(--force) (a default CA is
    a single self-signed certificate). It fails, before writing anything, when the tree or its copy of
    O(current_path) is missing.
  - The staging directory must lie outside the live tls directory; the module refuses, before writing anything,
    a staging path whose C(tls/) is, contains or lies inside it. The live directory is only read.
  - Compare, then act. A staged set from an earlier run that still chains to the current CAs is kept, so a rerun
    changes nothing. When the live set already is the staged set (loaded and restarted), the module reports
    RV(already_loaded) and changes nothing.
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
      - The diff lists staged files that would be created or updated, never their content.
options:
  current_path:
    description: The live tls directory, for example C(/var/lib/rancher/k3s/server/tls). Only read.
    type: path
    required: true
  staging_dir:
    description:
      - The staging tree (mode C(0700)). The set goes where RV(staging_tree.tls_dir) says, and
        RV(staging_tree.data_dir) is what C(certificate rotate-ca --path) takes.
      - Exactly one of O(staging_dir) and O(staging_path) is required.
    type: path
  staging_path:
    description:
      - The directory passed to C(certificate rotate-ca --path), named directly. The module fills its C(tls/).
    type: path
  backup_dir:
    description:
      - Where the roles back up live files before changing them. The module only resolves the rotation's backup
        tree in it (RV(backup_tree)); with O(mode=restore) it reads the backed-up CAs from there.
    type: path
  rotation_id:
    description:
      - O(mode=restore) the id of the rotation to undo (a directory under O(backup_dir)). Otherwise it is derived
        from the new server CA (RV(rotation_id)).
    type: str
  distribution:
    description: The distribution.
    type: str
    required: true
    choices: [k3s, rke2]
  mode:
    description: How to rotate; see the description.
    type: str
    default: cross_sign
    choices: [cross_sign, renew, new_root, restore]
  service_key:
    description:
      - C(rotate) stages a C(service.key) with a new RSA key first and the current keys kept; C(keep) stages a
        byte-identical copy of the current one.
    type: str
    default: rotate
    choices: [rotate, keep]
  service_key_keep:
    description: With O(service_key=rotate), how many current keys to keep (default all, at most 20).
    type: int
  root_cert:
    description: O(mode=renew) the existing root (to create a new intermediate with O(root_key)); O(mode=new_root) a
      supplied new root.
    type: path
  root_key:
    description: The key of O(root_cert).
    type: path
  intermediate_cert:
    description:
      - O(mode=renew) the existing intermediate that issues the new cluster CAs. Defaults to C(intermediate-ca.pem) in
        O(current_path). O(mode=new_root) a supplied new intermediate.
    type: path
  intermediate_key:
    description: The key of O(intermediate_cert). Defaults to C(intermediate-ca.key) in O(current_path).
    type: path
  root_key_type:
    description: Key type of created roots.
    type: str
    default: ecdsa-p256
    choices: [ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096]
  ca_key_type:
    description: Key type of created cluster CAs.
    type: str
    default: ecdsa-p256
    choices: [ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096]
  root_validity_days:
    description: Validity of created roots.
    type: int
    default: 7300
  ca_validity_days:
    description: Validity of created cluster CAs, clamped to their issuer's.
    type: int
    default: 3650
  key_format:
    description: C(traditional) (PKCS#1 / SEC1) or C(pkcs8) for created keys.
    type: str
    default: traditional
    choices: [traditional, pkcs8]
  cn_prefix:
    description: Prefix of created common names. Defaults to the program name.
    type: str
  bundle_order:
    description:
      - Order of the two new roots in a O(mode=cross_sign) bundle, after the new CA.
      - C(upstream) puts the new self-signed root first, then its cross-signed twin, as upstream's example script
        does.
      - C(cross_signed_first) puts the twin first. Go clients (k3s, kubelet, etcd, kubectl) verify either order.
        OpenSSL-based clients (curl, Python, nginx as a client) that hold only the current CA verify only this
        one, because OpenSSL follows the first issuer it finds in the presented chain and does not backtrack.
        rotate-ca's checks accept both.
    type: str
    choices: [upstream, cross_signed_first]
    default: upstream
seealso:
  - module: kubepki.certs.ca_verify
  - module: kubepki.certs.join_token
"""

EXAMPLES = r"""
- name: Stage a cross-signed rotation of a default-CA k3s cluster
  kubepki.certs.ca_rotation:
    current_path: /var/lib/rancher/k3s/server/tls
    staging_dir: /var/lib/kubepki/rotate-ca
    backup_dir: /var/lib/kubepki/backup
    distribution: k3s
  register: rotation

- name: Prove it safe before loading
  kubepki.certs.ca_verify:
    current_path: /var/lib/rancher/k3s/server/tls
    staging_path: "{{ rotation.staging_tree.data_dir }}"
    distribution: k3s

- name: Stage the CAs backed up by that rotation (load them with rotate-ca --force)
  kubepki.certs.ca_rotation:
    current_path: /var/lib/rancher/k3s/server/tls
    staging_dir: /var/lib/kubepki/rotate-ca-rollback
    distribution: k3s
    mode: restore
    backup_dir: /var/lib/kubepki/backup
    rotation_id: "{{ rotation.rotation_id }}"

- name: Renew the cluster CAs of a custom-CA RKE2 cluster under its intermediate
  kubepki.certs.ca_rotation:
    current_path: /var/lib/rancher/rke2/server/tls
    staging_dir: /var/lib/kubepki/rotate-ca
    distribution: rke2
    mode: renew
    intermediate_cert: /secure/intermediate-ca.pem
    intermediate_key: /secure/intermediate-ca.key
"""

RETURN = r"""
mode:
  description: The mode used.
  returned: always
  type: str
staging_tls:
  description: The staging tls directory that was filled (RV(staging_tree.tls_dir)).
  returned: always
  type: str
staging_tree:
  description: The staging tree's paths.
  returned: always
  type: dict
  contains:
    root:
      description: The tree (O(staging_dir)).
      type: str
    data_dir:
      description: What C(certificate rotate-ca --path) takes.
      type: str
    tls_dir:
      description: Where the set lies.
      type: str
    state_file:
      description: Where the roles record the rotation (id, mode, step, fingerprints, backup tree).
      type: str
  sample: {"root": "/var/lib/kubepki/rotate-ca", "data_dir": "/var/lib/kubepki/rotate-ca/server",
           "tls_dir": "/var/lib/kubepki/rotate-ca/server/tls", "state_file": "/var/lib/kubepki/rotate-ca/state.json"}
backup_tree:
  description: The rotation's backup tree, O(backup_dir)C(/)RV(rotation_id); null without O(backup_dir).
  returned: always
  type: str
  sample: /var/lib/kubepki/backup/20261122T120000Z
already_loaded:
  description: The live set already is the staged set; nothing was staged.
  returned: always
  type: bool
disruptive:
  description: Loading the set breaks trust for nodes and clients holding the current CAs (O(mode=new_root) and O(mode=restore)).
  returned: always
  type: bool
requires_force:
  description: C(certificate rotate-ca) accepts the set only with C(--force).
  returned: always
  type: bool
token_ca_hash:
  description: The join-token CA hash after loading (k3s hashCA of the staged C(server-ca.crt)), not the intermediate's fingerprint.
  returned: always
  type: str
token_ca_hash_before:
  description: The CA hash of the current C(server-ca.crt).
  returned: always
  type: str
token_changes:
  description: Whether every join token must be updated before nodes restart.
  returned: always
  type: bool
server_ca_sha256:
  description:
    - SHA-256 (hex) of the C(server-ca.crt) bundle every server serves on C(/cacerts) once it runs on the staged set
      (of the live one when RV(already_loaded)). Restart gates compare the served bundle with it.
  returned: always
  type: str
rotation_id:
  description:
    - Name of the rotation, from the new server CA's notBefore (UTC, C(YYYYMMDDTHHMMSSZ)). A resumed run gets the same
      id; O(mode=restore) returns O(rotation_id). The backup tree is named after it.
  returned: always
  type: str
  sample: 20261122T120000Z
nodes_needing_new_token:
  description: Which nodes need a new token.
  returned: always
  type: str
cas:
  description: Per CA the action, current and new fingerprints, new subject, new notAfter and bundle length.
  returned: always
  type: list
  elements: dict
files:
  description: The staged files with state and mode.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.ca_restore import plan_ca_restore
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import KEY_FORMATS, KEY_TYPES
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import ROTATE_CA_DISTRIBUTIONS
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import require_cryptography, run_engine
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rotation import (
    BUNDLE_ORDERS,
    MODES,
    SERVICE_KEY_ACTIONS,
    RotationRequest,
    apply_rotation,
    plan_diff,
    plan_report,
    plan_rotation,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            current_path=dict(type="path", required=True),
            staging_dir=dict(type="path"),
            staging_path=dict(type="path"),
            backup_dir=dict(type="path"),
            rotation_id=dict(type="str"),
            distribution=dict(type="str", required=True, choices=list(ROTATE_CA_DISTRIBUTIONS)),
            mode=dict(type="str", default="cross_sign", choices=list(MODES) + ["restore"]),
            service_key=dict(type="str", default="rotate", choices=list(SERVICE_KEY_ACTIONS), no_log=False),
            service_key_keep=dict(type="int", no_log=False),
            root_cert=dict(type="path"),
            root_key=dict(type="path", no_log=False),
            intermediate_cert=dict(type="path"),
            intermediate_key=dict(type="path", no_log=False),
            root_key_type=dict(type="str", default="ecdsa-p256", choices=list(KEY_TYPES), no_log=False),
            ca_key_type=dict(type="str", default="ecdsa-p256", choices=list(KEY_TYPES), no_log=False),
            root_validity_days=dict(type="int", default=7300),
            ca_validity_days=dict(type="int", default=3650),
            key_format=dict(type="str", default="traditional", choices=list(KEY_FORMATS), no_log=False),
            cn_prefix=dict(type="str"),
            bundle_order=dict(type="str", default="upstream", choices=list(BUNDLE_ORDERS)),
        ),
        required_one_of=[("staging_dir", "staging_path")],
        mutually_exclusive=[("staging_dir", "staging_path")],
        required_if=[("mode", "restore", ("backup_dir", "rotation_id"))],
        supports_check_mode=True,
    )
    require_cryptography(module)
    planner = plan_ca_restore if module.params["mode"] == "restore" else plan_rotation
    plan = run_engine(module, planner, RotationRequest(**module.params))
    if plan.changed and not module.check_mode:
        run_engine(module, apply_rotation, plan)
    result = plan_report(plan)
    if module._diff and plan.changed:
        result["diff"] = plan_diff(plan)
    module.exit_json(changed=plan.changed, **result)


if __name__ == "__main__":
    main()
