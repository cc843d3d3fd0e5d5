#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: leaf_renew
short_description: Renew kubeadm leaf certificates and kubeconfig credentials from the CA on disk
version_added: 0.3.0
description:
  - Re-issues the certificates C(kubeadm certs renew) renews (C(apiserver), C(apiserver-kubelet-client),
    C(front-proxy-client), C(etcd-server), C(etcd-peer), C(etcd-healthcheck-client), C(apiserver-etcd-client)) and
    the client credentials embedded in C(admin.conf), C(super-admin.conf), C(controller-manager.conf) and
    C(scheduler.conf), signed by the CA on disk, the way kubeadm does. Kept from the current certificate are the
    common name, organizations, DNS and IP subject alternative names and extended key usages; new are the private
    key and the validity.
  - Renews what has fewer than O(threshold_days) left, or everything selected with O(force=true), so a rerun renews
    nothing.
  - Checks every selected entry before writing anything; fails, naming the file and what to do, when a CA key does
    not match its certificate, the CA on disk did not sign the current certificate, a key does not match its
    certificate, a kubeconfig does not embed its credentials, or O(data_dir) holds no kubeadm certificates.
  - Backs up every file it replaces into O(backup_dir) at its absolute path, then writes each file atomically
    (key before certificate; a kubeconfig keeps every byte but its two credential values).
  - Does not restart anything; RV(restart) names the static pods that read a renewed certificate at start (the
    C(kubepki.certs.kubeadm_renew) role restarts exactly those).
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
  - kubepki.certs._cryptography_dep
  - kubepki.certs._file_writes
  - kubepki.certs._file_writes.private_keys
attributes:
  check_mode:
    details:
      - Plans (every check included) and reports what would be renewed; writes nothing.
  diff_mode:
    details:
      - Per renewed certificate, its expiry before and after; never key material.
options:
  distribution:
    description: The distribution whose layout to use; kubeadm only, so far.
    type: str
    default: kubeadm
    choices: [kubeadm]
  data_dir:
    description: The kubeadm directory holding C(pki/) and the kubeconfigs (default C(/etc/kubernetes)).
    type: path
  names:
    description:
      - kubeadm's names of the certificates to renew (for example C(apiserver), C(admin.conf)); default all of them.
      - A named certificate that is missing, or whose CA is externally managed (certificate without key), fails the
        task; without O(names) those are left alone and listed in RV(not_renewable).
    type: list
    elements: str
  threshold_days:
    description: Renew the certificates with fewer days than this left. Required unless O(force=true).
    type: int
  force:
    description: Renew every selected certificate whatever its expiry.
    type: bool
    default: false
  validity_days:
    description: Validity of the renewed certificates (kubeadm's default is 365 days), never past the CA's own.
    type: int
    default: 365
  key_type:
    description: Key type of the new keys; default the type of each current key.
    type: str
    choices: [ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096]
  admin_conf_copies:
    description:
      - Copies of C(admin.conf) made for people, such as C(/root/.kube/config). A copy with a user holding an older
        certificate of admin.conf's identity (same subject and issuer) gets admin.conf's credential as it is after
        this task (renewed or not); only those two values change. Missing copies and copies of other identities are
        left alone and reported.
    type: list
    elements: path
    default: []
  backup_dir:
    description:
      - Where the replaced files are copied, at their absolute path (mode 0600, directories 0700), before any write.
    type: path
    required: true
notes:
  - Restart the static pods named in RV(restart) afterwards; the kubelet's own C(kubelet.conf) is not renewed
    (the kubelet rotates its client certificate itself).
seealso:
  - name: kubeadm certs renew
    description: The kubeadm command this module mirrors.
    link: https://kubernetes.io/docs/tasks/administer-cluster/kubeadm/kubeadm-certs/
  - module: kubepki.certs.cert_check
"""

EXAMPLES = r"""
- name: Renew what expires within 30 days on this control-plane node
  kubepki.certs.leaf_renew:
    threshold_days: 30
    backup_dir: /var/lib/kubepki/backup/renew-20261203
  become: true
  register: renewal

- name: Renew the apiserver serving certificate now
  kubepki.certs.leaf_renew:
    names: [apiserver]
    force: true
    backup_dir: /var/lib/kubepki/backup/renew-apiserver
  become: true
"""

RETURN = r"""
entries:
  description: Every selected certificate with its status C(renew), C(keep), C(missing) or C(external).
  returned: always
  type: list
  elements: dict
  sample: [{"name": apiserver, "path": /etc/kubernetes/pki/apiserver.crt, "status": renew, "reason": renewed,
            "old_not_after": "2026-12-20T10:00:00Z", "new_not_after": "2027-12-03T16:03:19Z"}]
renewed:
  description: The names renewed (in check mode, those that would be).
  returned: always
  type: list
  elements: str
not_renewable:
  description:
    - Names left alone because missing or under an externally managed CA (only without O(names)).
    - Not called C(skipped), which Ansible reads as the whole task being skipped.
  returned: always
  type: list
  elements: str
restart:
  description: The static pods that read a renewed certificate at start (C(kube-apiserver), C(etcd), ...).
  returned: always
  type: list
  elements: str
  sample: [kube-apiserver]
admin_conf_copies:
  description: Each of O(admin_conf_copies) with its status C(refresh), C(current), C(missing) or C(other).
  returned: always
  type: list
  elements: dict
  sample: [{"path": /root/.kube/config, "status": refresh, "reason": "held an older credential of /etc/kubernetes/admin.conf"}]
backup_files:
  description: The copies written to O(backup_dir) (empty in check mode).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import KEY_TYPES
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import KUBEADM_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.leaf_renewal import (
    apply_renewals,
    plan_diff,
    plan_renewals,
    plan_report,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import require_cryptography, run_engine


def main():
    module = AnsibleModule(
        argument_spec=dict(
            distribution=dict(type="str", default=KUBEADM_DISTRIBUTIONS[0], choices=list(KUBEADM_DISTRIBUTIONS)),
            data_dir=dict(type="path"),
            names=dict(type="list", elements="str"),
            threshold_days=dict(type="int"),
            force=dict(type="bool", default=False),
            validity_days=dict(type="int", default=365),
            key_type=dict(type="str", choices=list(KEY_TYPES)),
            admin_conf_copies=dict(type="list", elements="path", default=[]),
            backup_dir=dict(type="path", required=True),
        ),
        required_one_of=[("threshold_days", "force")],
        supports_check_mode=True,
    )
    require_cryptography(module)
    params = module.params
    layout = run_engine(module, get_layout, params["distribution"], data_dir=params["data_dir"])
    plan = run_engine(module, plan_renewals, layout, names=params["names"], threshold_days=params["threshold_days"],
                      force=params["force"], key_type=params["key_type"], validity_days=params["validity_days"],
                      backup_root=params["backup_dir"], admin_copies=params["admin_conf_copies"])
    result = plan_report(plan)
    result["backup_files"] = []
    if module._diff and plan.changed:
        result["diff"] = plan_diff(plan)
    if plan.changed and not module.check_mode:
        result["backup_files"] = run_engine(module, apply_renewals, plan)
    module.exit_json(changed=plan.changed, **result)


if __name__ == "__main__":
    main()
