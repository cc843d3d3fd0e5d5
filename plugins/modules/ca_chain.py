#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ca_chain
short_description: Create a custom CA hierarchy in the layout k3s, RKE2 or kubeadm expects
version_added: 0.1.0
description:
  - Fills a tls directory with a CA set in exactly the file layout the distribution reads.
  - For C(k3s) and C(rke2) (the layout of C(generate-custom-ca-certs.sh)) a root CA, an intermediate CA, and the
    cluster CAs C(server-ca), C(client-ca), C(request-header-ca), C(etcd/server-ca) and C(etcd/peer-ca)
    issued by the intermediate; each C(<ca>.crt) is the bundle CA + intermediate + root, C(<ca>.pem) the CA alone.
    Also C(service.key).
  - For C(kubeadm) the CAs C(ca), C(front-proxy-ca) and C(etcd/ca), self-signed unless O(root_cert) is supplied,
    and C(sa.key)/C(sa.pub).
  - Compare, then act. An existing CA that is valid, matches its key and was issued by the expected parent is
    kept; one that conflicts makes the task fail unless O(force=true). A supplied root or root and intermediate
    are reused. Nothing is written when the input is bad.
  - Validity never extends past the issuer's notAfter.
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
      - The diff lists the files that would be created or updated, never their content.
options:
  path:
    description:
      - The tls directory to fill, for example C(/var/lib/rancher/k3s/server/tls) before the first start, or a
        staging C(.../tls) directory. Created with mode C(0700) when missing.
    type: path
    required: true
  distribution:
    description: Which layout to write.
    type: str
    required: true
    choices: [k3s, rke2, kubeadm]
  root_cert:
    description:
      - An existing root CA certificate (PEM) to build under instead of creating a root. Further certificates in the
        file are treated as the root's own issuers and appended to every bundle.
    type: path
  root_key:
    description:
      - The private key of O(root_cert). Needed only when the intermediate (k3s, RKE2) or the CAs (kubeadm) must be
        issued by the root. It is used, never copied into O(path).
    type: path
  intermediate_cert:
    description: An existing intermediate CA issued by O(root_cert). Requires O(intermediate_key).
    type: path
  intermediate_key:
    description: The private key of O(intermediate_cert).
    type: path
  root_key_type:
    description: Key type of a root created by this module.
    type: str
    default: rsa-4096
    choices: [ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096]
  intermediate_key_type:
    description: Key type of an intermediate created by this module.
    type: str
    default: rsa-4096
    choices: [ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096]
  ca_key_type:
    description: Key type of the cluster CAs. Defaults to C(ecdsa-p256) for k3s and RKE2, C(rsa-2048) for kubeadm.
    type: str
    choices: [ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096]
  service_key_type:
    description: Key type of a service-account key created by this module (an existing one is kept).
    type: str
    default: rsa-2048
    choices: [ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096]
  key_format:
    description:
      - C(traditional) writes RSA keys as PKCS#1 and EC keys as SEC1, as k3s and OpenSSL do; C(pkcs8) writes
        C(BEGIN PRIVATE KEY). Existing key files keep their format.
    type: str
    default: traditional
    choices: [traditional, pkcs8]
  root_validity_days:
    description: Validity of a created root.
    type: int
    default: 7300
  intermediate_validity_days:
    description: Validity of a created intermediate, clamped to the root's notAfter.
    type: int
    default: 3700
  ca_validity_days:
    description: Validity of created cluster CAs, clamped to the issuer's notAfter. Defaults to 3700 (k3s, RKE2) or
      3650 (kubeadm).
    type: int
  constrain_path_length:
    description:
      - Set basicConstraints pathlen on created CAs (root 2, intermediate 1, cluster CAs 0) so a leaked cluster CA key
        cannot mint further CAs. Off by default, as upstream.
    type: bool
    default: false
  cn_prefix:
    description: Prefix of created CAs' common names (C(<prefix>-server-ca@<unix time>)). Defaults to the program name.
    type: str
  force:
    description:
      - Replace existing CAs that conflict with the request (wrong issuer, expired, key missing). Without it such a
        CA makes the task fail and nothing is written. Never use it on a running cluster's live tls directory.
    type: bool
    default: false
seealso:
  - module: kubepki.certs.cert_check
  - module: kubepki.certs.service_account_key
"""

EXAMPLES = r"""
- name: Custom CA set for a new k3s server, before its first start
  kubepki.certs.ca_chain:
    path: /var/lib/rancher/k3s/server/tls
    distribution: k3s

- name: Build under the corporate root and intermediate, EC keys in PKCS#8
  kubepki.certs.ca_chain:
    path: /opt/staging/rke2/server/tls
    distribution: rke2
    root_cert: /secure/root-ca.pem
    intermediate_cert: /secure/intermediate-ca.pem
    intermediate_key: /secure/intermediate-ca.key
    ca_key_type: ecdsa-p384
    key_format: pkcs8
  register: ca_set

- name: Show the join token CA hash for the new set
  ansible.builtin.debug:
    msg: "K10{{ ca_set.token_ca_hash }}::server:<password>"

- name: kubeadm CAs under an existing root
  kubepki.certs.ca_chain:
    path: /etc/kubernetes/pki
    distribution: kubeadm
    root_cert: /secure/root-ca.pem
    root_key: /secure/root-ca.key
"""

RETURN = r"""
path:
  description: The tls directory.
  returned: always
  type: str
files:
  description: Every file of the set with its state (C(created), C(updated) or C(unchanged)) and mode.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/var/lib/rancher/k3s/server/tls/server-ca.crt", "state": "created", "mode": "0644"}]
cas:
  description:
    - The cluster CAs by name (C(server-ca), C(client-ca), C(request-header-ca), C(etcd-server-ca), C(etcd-peer-ca);
      kubeadm C(ca), C(front-proxy-ca), C(etcd-ca)) with cert and key path, subject, issuer, SHA-256 fingerprint,
      validity (ISO 8601 UTC), days left, key type and whether this run generated it.
  returned: always
  type: dict
  sample: {"server-ca": {"cert": "/var/lib/rancher/k3s/server/tls/server-ca.pem", "fingerprint_sha256": "AB:CD:...",
           "not_after": "2036-05-01T10:00:00Z", "days_left": 3699, "generated": true}}
root:
  description: The root CA, in the same form as an entry of RV(cas); null for self-signed kubeadm CAs.
  returned: always
  type: dict
intermediate:
  description: The intermediate CA, in the same form as an entry of RV(cas); null when there is none.
  returned: always
  type: dict
token_ca_hash:
  description:
    - The CA hash of a join token (C(K10<hash>::...)) for the resulting C(server-ca.crt), by k3s's hashCA rule
      (bundle = SHA-256 of the DER of the chain's root). Null for kubeadm.
  returned: always
  type: str
  sample: 8f1c0d...e2
discovery_token_ca_cert_hash:
  description: kubeadm's C(--discovery-token-ca-cert-hash) (C(sha256:) of the CA's SubjectPublicKeyInfo). Null for k3s/RKE2.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.ca_set import (
    CASetRequest,
    apply_plan,
    plan_ca_set,
    plan_diff,
    plan_report,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import KEY_FORMATS, KEY_TYPES
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import CA_SET_DISTRIBUTIONS
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import require_cryptography, run_engine


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            distribution=dict(type="str", required=True, choices=list(CA_SET_DISTRIBUTIONS)),
            root_cert=dict(type="path"),
            root_key=dict(type="path", no_log=False),
            intermediate_cert=dict(type="path"),
            intermediate_key=dict(type="path", no_log=False),
            root_key_type=dict(type="str", default="rsa-4096", choices=list(KEY_TYPES)),
            intermediate_key_type=dict(type="str", default="rsa-4096", choices=list(KEY_TYPES)),
            ca_key_type=dict(type="str", choices=list(KEY_TYPES)),
            service_key_type=dict(type="str", default="rsa-2048", choices=list(KEY_TYPES)),
            key_format=dict(type="str", default="traditional", choices=list(KEY_FORMATS)),
            root_validity_days=dict(type="int", default=7300),
            intermediate_validity_days=dict(type="int", default=3700),
            ca_validity_days=dict(type="int"),
            constrain_path_length=dict(type="bool", default=False),
            cn_prefix=dict(type="str"),
            force=dict(type="bool", default=False),
        ),
        required_by={"intermediate_cert": ["root_cert", "intermediate_key"]},
        supports_check_mode=True,
    )
    require_cryptography(module)
    request = CASetRequest(**module.params)
    plan = run_engine(module, plan_ca_set, request)
    if plan.changed and not module.check_mode:
        run_engine(module, apply_plan, plan)
    result = plan_report(plan)
    for warning in plan.warnings:
        module.warn(warning)
    if module._diff and plan.changed:
        result["diff"] = plan_diff(plan)
    module.exit_json(changed=plan.changed, **result)


if __name__ == "__main__":
    main()
