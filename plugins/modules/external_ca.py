#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: external_ca
short_description: Move a kubeadm node to external CA mode with CSRs signed by a CA the operator holds
version_added: 0.3.0
description:
  - Three steps, the CA key never on the node afterwards.
  - O(step=request) (on the node) writes a new key and a CSR for every certificate kubeadm renews into O(request_dir),
    in kubeadm's tree (C(pki/apiserver.csr) and C(.key), C(admin.conf.csr) and C(.key)), with the subject and DNS/IP
    names of the node's current certificate. A rerun keeps the pairs already there.
  - O(step=sign) (on the controller, where the CA key is) signs every CSR in O(request_dir) that kubeadm has the
    CA O(ca_name) sign, with kubeadm's extended key usages for its name (never those a request asks for), and writes
    C(<name>.crt) beside it. Copy the request directory from the node to the controller and back around this step.
  - O(step=install) (on the node) checks every signed certificate (it matches its key, the node's CA certificate
    signed it) before writing anything, backs up what it replaces, puts each key and certificate in place (the
    kubeconfigs get both embedded) and, with O(remove_ca_keys=true), removes the keys of the CAs that signed them,
    which puts kubeadm in external CA mode for them (C(kubeadm certs check-expiration) then says
    C(EXTERNALLY MANAGED)). A removed CA key is not backed up.
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
      - The files the step writes or removes; never key material.
options:
  step:
    description: Which step to run (see the description).
    type: str
    required: true
    choices: [request, sign, install]
  distribution:
    description: The distribution whose certificate names and layout to use; kubeadm only, so far.
    type: str
    default: kubeadm
    choices: [kubeadm]
  data_dir:
    description: The kubeadm directory holding C(pki/) and the kubeconfigs (default C(/etc/kubernetes)).
    type: path
  request_dir:
    description: The directory holding the keys, CSRs and signed certificates (keys 0600, directories 0700).
    type: path
    required: true
  names:
    description: kubeadm's names of the certificates to handle (for example C(apiserver), C(admin.conf)); default all.
    type: list
    elements: str
  key_type:
    description: O(step=request) only. Key type of the new keys; default the type of each current key.
    type: str
    choices: [ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096]
  ca_name:
    description: O(step=sign) only. The kubeadm CA whose certificates to sign.
    type: str
    choices: [ca, front-proxy-ca, etcd-ca]
  ca_cert:
    description: O(step=sign) only. That CA's certificate on the controller.
    type: path
  ca_key:
    description: O(step=sign) only. That CA's private key on the controller.
    type: path
  validity_days:
    description: O(step=sign) only. Validity of the signed certificates, never past the CA's own.
    type: int
    default: 365
  remove_ca_keys:
    description: O(step=install) only. Remove the key of every CA that signed an installed certificate.
    type: bool
    default: false
  backup_dir:
    description: O(step=install) only. Where the replaced files are copied, at their absolute path, before any write.
    type: path
seealso:
  - name: kubeadm certs generate-csr
    description: kubeadm's own CSR generation, from a kubeadm config.
    link: https://kubernetes.io/docs/tasks/administer-cluster/kubeadm/kubeadm-certs/#signing-csr-with-an-external-ca
  - module: kubepki.certs.leaf_renew
"""

EXAMPLES = r"""
- name: Keys and CSRs on the node
  kubepki.certs.external_ca:
    step: request
    request_dir: /var/lib/kubepki/csr
  become: true

- name: Sign the cluster CA's requests on the controller (the request dir fetched there first)
  kubepki.certs.external_ca:
    step: sign
    request_dir: "{{ playbook_dir }}/csr/{{ inventory_hostname }}"
    ca_name: ca
    ca_cert: "{{ playbook_dir }}/ca/ca.crt"
    ca_key: "{{ playbook_dir }}/ca/ca.key"
  delegate_to: localhost

- name: Install them (the signed request dir copied back) and drop the CA keys from the node
  kubepki.certs.external_ca:
    step: install
    request_dir: /var/lib/kubepki/csr
    remove_ca_keys: true
    backup_dir: /var/lib/kubepki/backup/external-ca
  become: true
"""

RETURN = r"""
items:
  description: Per certificate, its files and state (C(created)/C(present) for requests, C(signed)/C(present) for
    signing, C(installed)/C(present) for installing).
  returned: always
  type: list
  elements: dict
  sample: [{"name": apiserver, "csr": /var/lib/kubepki/csr/pki/apiserver.csr, "key": /var/lib/kubepki/csr/pki/apiserver.key,
            "state": created}]
written:
  description: The files written (in check mode, those that would be).
  returned: always
  type: list
  elements: str
removed:
  description: The CA keys removed (in check mode, those that would be).
  returned: always
  type: list
  elements: str
backup_files:
  description: The copies written to O(backup_dir) before installing (empty in check mode).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import pending_writes_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.external_ca import (
    apply_step,
    plan_csrs,
    plan_install,
    plan_signing,
    step_report,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import KEY_TYPES
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import KUBEADM_CA_NAMES, KUBEADM_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import require_cryptography, run_engine

STEPS = ("request", "sign", "install")


def _plan(module, layout):
    params = module.params
    if params["step"] == "request":
        return run_engine(module, plan_csrs, layout, params["request_dir"], names=params["names"],
                          key_type=params["key_type"])
    if params["step"] == "sign":
        return run_engine(module, plan_signing, layout, params["request_dir"], ca_name=params["ca_name"],
                          ca_cert_path=params["ca_cert"], ca_key_path=params["ca_key"], names=params["names"],
                          validity_days=params["validity_days"])
    return run_engine(module, plan_install, layout, params["request_dir"], names=params["names"],
                      remove_ca_keys=params["remove_ca_keys"], backup_root=params["backup_dir"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            step=dict(type="str", required=True, choices=list(STEPS)),
            distribution=dict(type="str", default=KUBEADM_DISTRIBUTIONS[0], choices=list(KUBEADM_DISTRIBUTIONS)),
            data_dir=dict(type="path"),
            request_dir=dict(type="path", required=True),
            names=dict(type="list", elements="str"),
            key_type=dict(type="str", choices=list(KEY_TYPES)),
            ca_name=dict(type="str", choices=list(KUBEADM_CA_NAMES)),
            ca_cert=dict(type="path"),
            ca_key=dict(type="path", no_log=False),
            validity_days=dict(type="int", default=365),
            remove_ca_keys=dict(type="bool", default=False),
            backup_dir=dict(type="path"),
        ),
        required_if=[("step", "sign", ("ca_name", "ca_cert", "ca_key")), ("step", "install", ("backup_dir",))],
        supports_check_mode=True,
    )
    require_cryptography(module)
    layout = run_engine(module, get_layout, module.params["distribution"], data_dir=module.params["data_dir"])
    plan = _plan(module, layout)
    result = step_report(plan)
    result["backup_files"] = []
    if module._diff and plan.changed:
        result["diff"] = pending_writes_diff(module.params["request_dir"], result["written"] + result["removed"])
    if plan.changed and not module.check_mode:
        result["backup_files"] = run_engine(module, apply_step, plan)
    module.exit_json(changed=plan.changed, **result)


if __name__ == "__main__":
    main()
