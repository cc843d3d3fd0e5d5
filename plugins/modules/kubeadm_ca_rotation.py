#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kubeadm_ca_rotation
short_description: One node's part of a kubeadm CA rotation in phases (prepare, promote, finalize), resumable and reversible
version_added: 0.4.0
description:
  - Rotates kubeadm's cluster CA (C(ca)), front-proxy CA and etcd CA on one node, in three phases that the role
    kubepki.certs.kubeadm_ca_rotation runs node by node with the static pod restarts and health gates between them.
  - O(step=stage) (one control-plane node) makes, once, a new CA per rotated CA, the new CA cross-signed by the old one
    and a copy of the old certificate, under C(<state_dir>/staged) (0700, keys 0600). A rerun keeps a staged set that
    still matches the CAs on disk.
  - O(step=apply) puts this node's files in the state the O(phase) asks for. V(prepare) makes every bundle and
    kubeconfig trust old and new, points the controller-manager flags that take no bundle at C(pki/ca-next.crt) and
    C(.key) (the new CA alone), and re-issues the serving certificates (apiserver, etcd server and peer) by the new CA,
    served with the cross-signed certificate so that clients holding only the old CA keep working. V(promote) puts
    the new CA first and its key in place and re-issues every client certificate and kubeconfig credential (the
    kubelet's included) by the new CA. V(finalize) removes the old CA from every bundle and kubeconfig, serves the
    leaves without the cross-signed certificate, restores the controller-manager flags and removes the C(-next) files.
    Every file is compared with what the phase puts there first, so a rerun after an interruption writes only what is
    left. Each file is backed up under C(<state_dir>/backup/<phase>) the first time the phase changes it.
  - O(step=record) records the phase as done on this node in C(<state_dir>/state.json); the next phase refuses to run
    before it. O(step=rollback) restores the files of O(phase) from its backup, removes the files it created and
    forgets the record. O(step=status) reads the record.
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
      - The files the phase writes or removes and what each will hold; never key material.
options:
  step:
    description: Which step to run (see the description).
    type: str
    required: true
    choices: [stage, apply, record, rollback, status]
  phase:
    description: The phase to apply, record or roll back.
    type: str
    choices: [prepare, promote, finalize]
  cas:
    description: The CAs to rotate, by kubeadm's names.
    type: list
    elements: str
    choices: [ca, front-proxy-ca, etcd-ca]
    default: [ca, front-proxy-ca, etcd-ca]
  distribution:
    description: The distribution whose layout to use; kubeadm only.
    type: str
    default: kubeadm
    choices: [kubeadm]
  data_dir:
    description: The kubeadm directory holding C(pki/), C(manifests/) and the kubeconfigs (default C(/etc/kubernetes)).
    type: path
  state_dir:
    description: This rotation's directory on the node, for example C(/var/lib/kubepki/<rotation id>) (staged CAs,
      backups, C(state.json)).
    type: path
    required: true
  validity_days:
    description: Validity of the re-issued leaves, never past the new CA's own.
    type: int
    default: 365
  ca_validity_days:
    description: O(step=stage) only. Validity of the new CAs and of the cross-signed certificates (the latter never past
      the old CA's own).
    type: int
    default: 3650
seealso:
  - name: Manual rotation of CA certificates
    description: The Kubernetes task this module automates, phase by phase.
    link: https://kubernetes.io/docs/tasks/tls/manual-rotation-of-ca-certificates/
  - module: kubepki.certs.static_pod_restart
"""

EXAMPLES = r"""
- name: Stage the new CAs once
  kubepki.certs.kubeadm_ca_rotation:
    step: stage
    state_dir: /var/lib/kubepki/ca-2026-12
  run_once: true
  become: true

- name: Prepare this node (trust old and new)
  kubepki.certs.kubeadm_ca_rotation:
    step: apply
    phase: prepare
    state_dir: /var/lib/kubepki/ca-2026-12
  become: true

- name: Undo promote on this node
  kubepki.certs.kubeadm_ca_rotation:
    step: rollback
    phase: promote
    state_dir: /var/lib/kubepki/ca-2026-12
  become: true
"""

RETURN = r"""
cas:
  description: Per rotated CA (after O(step=stage), O(step=apply) or O(step=record)), the old and new fingerprints
    (SHA-256), the discovery-token CA hashes of both (for C(kubeadm join) during the overlap), the new CA's subject and
    its PEM, base64-encoded (public).
  returned: when the staged CAs are known
  type: dict
changes:
  description: The files written or removed (in check mode, those that would be), with what each holds now.
  returned: always
  type: list
  elements: dict
  sample: [{"path": /etc/kubernetes/pki/ca.crt, "action": write, "what": "trust old + new"}]
done:
  description: The phases recorded as done on this node, in order.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki import kubeadm_ca_phases as phases
from ansible_collections.kubepki.certs.plugins.module_utils._pki import kubeadm_ca_stage as stage
from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import Change, summary_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import KUBEADM_CA_NAMES, KUBEADM_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import require_cryptography, run_engine

STEPS = ("stage", "apply", "record", "rollback", "status")


def _stage_dir(params) -> str:
    return params["state_dir"].rstrip("/") + "/staged"


def _stage(module, layout):
    params = module.params
    planned = run_engine(module, stage.plan_stage, layout, _stage_dir(params), params["cas"],
                         validity_days=params["ca_validity_days"])
    writes = [w for _name, _status, files in planned for w in files]
    if writes and not module.check_mode:
        run_engine(module, stage.apply_stage, _stage_dir(params), planned)
    result = {"changes": [{"path": path, "action": "write", "what": "staged"} for path, _data, _mode in writes]}
    if not module.check_mode or not writes:
        result["cas"] = stage.staged_report(run_engine(module, stage.load_staged, layout, _stage_dir(params), params["cas"]))
    if module._diff and writes:
        result["diff"] = summary_diff(_stage_dir(params), [Change(path, "absent", "staged") for path, _d, _m in writes])
    return bool(writes), result


def _apply(module, layout):
    params = module.params
    run_engine(module, phases.check_order, params["state_dir"], params["phase"])
    staged = run_engine(module, stage.load_staged, layout, _stage_dir(params), params["cas"])
    plan = run_engine(module, phases.plan_phase, layout, staged, params["phase"], validity_days=params["validity_days"])
    result = {"changes": phases.phase_report(plan), "cas": stage.staged_report(staged)}
    if module._diff and plan.changed:
        result["diff"] = phases.phase_diff(plan)
    if plan.changed and not module.check_mode:
        run_engine(module, phases.apply_phase, plan, params["state_dir"])
    return plan.changed, result


def _record(module, layout):
    params = module.params
    staged = run_engine(module, stage.load_staged, layout, _stage_dir(params), params["cas"])
    report = stage.staged_report(staged)
    done = params["phase"] in phases.done_phases(params["state_dir"])
    if not done and not module.check_mode:
        fingerprints = {name: {k: v for k, v in item.items() if k.endswith("fingerprint")} for name, item in report.items()}
        run_engine(module, phases.record_phase, params["state_dir"], params["phase"], fingerprints)
    return not done, {"changes": [], "cas": report}


def _rollback(module, _layout):
    params = module.params
    restores, removals = run_engine(module, phases.plan_rollback, params["state_dir"], params["phase"])
    recorded = params["phase"] in phases.done_phases(params["state_dir"])
    changes = [{"path": live, "action": "write", "what": "restored from %s" % copy} for live, copy in restores]
    changes += [{"path": path, "action": "remove", "what": "created by %s" % params["phase"]} for path in removals]
    changed = bool(changes) or recorded
    if changed and not module.check_mode:
        run_engine(module, phases.apply_rollback, params["state_dir"], params["phase"], restores, removals)
    result = {"changes": changes}
    if module._diff and changes:
        result["diff"] = summary_diff("kubeadm CA rotation, rollback of %s" % params["phase"],
                                      [Change(c["path"], "present", c["what"]) for c in changes])
    return changed, result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            step=dict(type="str", required=True, choices=list(STEPS)),
            phase=dict(type="str", choices=list(phases.PHASES)),
            cas=dict(type="list", elements="str", choices=list(KUBEADM_CA_NAMES), default=list(KUBEADM_CA_NAMES)),
            distribution=dict(type="str", default=KUBEADM_DISTRIBUTIONS[0], choices=list(KUBEADM_DISTRIBUTIONS)),
            data_dir=dict(type="path"),
            state_dir=dict(type="path", required=True),
            validity_days=dict(type="int", default=365),
            ca_validity_days=dict(type="int", default=3650),
        ),
        required_if=[("step", "apply", ("phase",)), ("step", "record", ("phase",)), ("step", "rollback", ("phase",))],
        supports_check_mode=True,
    )
    require_cryptography(module)
    layout = run_engine(module, get_layout, module.params["distribution"], data_dir=module.params["data_dir"])
    steps = {"stage": _stage, "apply": _apply, "record": _record, "rollback": _rollback}
    changed, result = False, {"changes": []}
    if module.params["step"] in steps:
        changed, result = steps[module.params["step"]](module, layout)
    result["done"] = run_engine(module, phases.done_phases, module.params["state_dir"])
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
