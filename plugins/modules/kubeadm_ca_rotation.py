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
    still matches the CAs on disk; a finished rotation (finalize recorded) stages nothing.
  - O(step=apply) puts this node's files in the state the O(phase) asks for. V(prepare) makes every bundle and
    kubeconfig trust old and new, points the controller-manager flags that take no bundle at C(pki/ca-next.crt) and
    C(.key) (the new CA alone), and re-issues the serving certificates (apiserver, etcd server and peer) by the new CA,
    served with the cross-signed certificate so that clients holding only the old CA keep working. V(promote) puts
    the new CA first and its key in place and re-issues every client certificate and kubeconfig credential (the
    kubelet's included) by the new CA. V(finalize) removes the old CA from every bundle and kubeconfig, serves the
    leaves without the cross-signed certificate, restores the controller-manager flags and removes the C(-next) files.
    Every file is compared with what the phase puts there first, so a rerun after an interruption writes only what is
    left. Each file is backed up under C(<state_dir>/backup/<phase>) the first time the phase changes it.
  - On a node without CA keys (a worker) the kubelet's credential is renewed at promote without a CA key there.
    O(step=request) keeps a new key under C(<state_dir>/requests) (0600) and returns a CSR per kubeconfig whose
    credential the new CA has not issued yet; O(step=sign), on a control-plane node, signs such CSRs with the staged new
    cluster CA (node identities only, C(system:node:<name>) in C(system:nodes)); O(step=apply) with O(signed) installs
    them.
  - O(step=export) (read-only, the staging node) returns the staged files in RV(files), in one call; register it with
    C(no_log), it holds the new CA keys. O(step=receive) writes them on another node (O(files)), the keys 0600, in one
    call; a copy already equal is left alone.
  - O(step=record) records the phase as done on this node in C(<state_dir>/state.json); the next phase refuses to run
    before it. Recording V(promote) or V(finalize) also removes the request keys of O(step=request), whose credentials
    are installed by then. O(step=rollback) restores the files of O(phase) from its backup, removes the files it created and
    forgets the record. O(step=status) reads the record.
  - O(step=published) (read-only, needs kubectl and C(admin.conf)) lists the namespaces whose C(kube-root-ca.crt)
    ConfigMap does not hold the new cluster CA yet (the controller-manager publishes it from C(--root-ca-file)).
    O(step=cluster_info) puts the cluster CA joins must trust alone into C(kube-public/cluster-info) when that ConfigMap
    exists (kubeadm join's discovery; a bundle there makes join loop, kubernetes/kubeadm#1399). That is the new CA once
    V(promote) has begun on this node, the old one before it or after its rollback.
  - With O(service_account_key=true) the service-account key rotates in the same phases. O(step=stage) stages a new
    key (C(sa.key)) and the public keys C(pki/sa.pub) held (C(sa-previous.pub)). V(prepare) makes C(sa.pub) hold the
    previous keys and the new one (every apiserver verifies tokens of both), V(promote) puts the new key in C(sa.key)
    (new tokens are signed with it), V(finalize) leaves the new key alone in C(sa.pub) (tokens signed with the
    previous keys are refused from then on).
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
    choices: [stage, export, receive, request, sign, apply, record, rollback, status, published, cluster_info]
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
  files:
    description:
      - O(step=receive) only. The staged files, as O(step=export) returned them in RV(files) (the names
        O(step=stage) returned in RV(staged_files) mapped to their content, base64-encoded). Never logged.
    type: dict
    default: {}
  requests:
    description: O(step=sign) only. The CSRs to sign, as O(step=request) returned them.
    type: list
    elements: dict
    default: []
  signed:
    description: O(step=apply) only, on a node without CA keys. The certificates O(step=sign) returned for this node's
      requests.
    type: list
    elements: dict
    default: []
  validity_days:
    description: Validity of the re-issued leaves, never past the new CA's own.
    type: int
    default: 365
  ca_validity_days:
    description: O(step=stage) only. Validity of the new CAs and of the cross-signed certificates (the latter never past
      the old CA's own).
    type: int
    default: 3650
  service_account_key:
    description: Rotate the service-account key (C(pki/sa.key), C(pki/sa.pub)) in the same phases. Nodes without
      C(pki/sa.key) (workers) have nothing of it to change.
    type: bool
    default: true
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
service_account_key:
  description: With O(service_account_key=true), the SHA-256 fingerprints of the public keys that verified before the
    rotation (the old signing key first) and of the new signing key; never key material.
  returned: when the staged key is known on a node with C(pki/sa.key)
  type: dict
  sample: {"previous_fingerprints": ["3f1c..."], "new_fingerprint": "9a0b..."}
staged_files:
  description: O(step=stage) only. The staging directory's files relative to it (keys end in C(.key)), which every
    other node gets a copy of.
  returned: when O(step=stage) stages or keeps a rotation
  type: list
  elements: str
  sample: [ca-cross.crt, ca-previous.crt, ca.crt, ca.key, sa-previous.pub, sa.key]
files:
  description:
    - O(step=export) only. The staged files, their names relative to the staging directory (RV(staged_files)) mapped to
      their content, base64-encoded; what O(step=receive) takes. Holds the new CA keys (C(.key)), so register it with
      C(no_log) and drop the keys for a node that gets none.
  returned: when O(step=export)
  type: dict
finished:
  description: O(step=stage) only. True when the rotation in O(state_dir) is finished (finalize recorded) and nothing
    was staged; another rotation takes another O(state_dir).
  returned: when O(step=stage) finds the rotation finished
  type: bool
requests:
  description: O(step=request) only. Per kubeconfig needing a certificate of the new CA, its file name and CSR (PEM).
  returned: when O(step=request)
  type: list
  elements: dict
signed:
  description: O(step=sign) only. Per request, the kubeconfig file name and the certificate (PEM).
  returned: when O(step=sign)
  type: list
  elements: dict
stale_namespaces:
  description: O(step=published) only. The namespaces whose C(kube-root-ca.crt) lacks the new CA (empty when published).
  returned: when O(step=published)
  type: list
  elements: str
staged:
  description: Whether this node holds the staged certificates of every rotated CA.
  returned: always
  type: bool
started:
  description: The phases with a backup on this node (begun, not rolled back), in order.
  returned: always
  type: list
  elements: str
done:
  description: The phases recorded as done on this node, in order.
  returned: always
  type: list
  elements: str
"""

import base64
import binascii
import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki import kubeadm_ca_cluster as cluster
from ansible_collections.kubepki.certs.plugins.module_utils._pki import kubeadm_ca_phases as phases
from ansible_collections.kubepki.certs.plugins.module_utils._pki import kubeadm_ca_requests as requests
from ansible_collections.kubepki.certs.plugins.module_utils._pki import kubeadm_ca_sa_key as sa_key
from ansible_collections.kubepki.certs.plugins.module_utils._pki import kubeadm_ca_stage as stage
from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import dump_certificates
from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import Change, summary_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import KUBEADM_CA_NAMES, KUBEADM_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import kubectl_command, require_cryptography, run_engine

STEPS = ("stage", "export", "receive", "request", "sign", "apply", "record", "rollback", "status", "published", "cluster_info")


def _stage_dir(params) -> str:
    return params["state_dir"].rstrip("/") + "/staged"


def _stage(module, layout):
    params = module.params
    if phases.FINALIZE in run_engine(module, phases.done_phases, params["state_dir"]):
        # a rerun of a finished rotation: nothing to stage (another rotation takes another state_dir)
        return False, {"changes": [], "finished": True}
    planned = run_engine(module, stage.plan_stage, layout, _stage_dir(params), params["cas"],
                         validity_days=params["ca_validity_days"])
    if params["service_account_key"]:
        planned.append(("service-account key", "", run_engine(module, sa_key.plan_sa_stage, layout, _stage_dir(params))))
    writes = [w for _name, _status, files in planned for w in files]
    if writes and not module.check_mode:
        run_engine(module, stage.apply_stage, _stage_dir(params), planned)
    result = {"changes": [{"path": path, "action": "write", "what": "staged"} for path, _data, _mode in writes],
              "staged_files": _staged_files(layout, params)}
    if not module.check_mode or not writes:
        result["cas"] = stage.staged_report(run_engine(module, stage.load_staged, layout, _stage_dir(params), params["cas"]))
        result.update(_sa_report(module, layout))
    if module._diff and writes:
        result["diff"] = summary_diff(_stage_dir(params), [Change(path, "absent", "staged") for path, _d, _m in writes])
    return bool(writes), result


def _receive(module, _layout):
    try:
        files = {name: base64.b64decode(content, validate=True) for name, content in module.params["files"].items()}
    except (TypeError, ValueError, binascii.Error):
        module.fail_json(msg="files: every value must be the base64 content of a staged file (as slurp reads it)")
    writes = run_engine(module, stage.plan_receive, _stage_dir(module.params), files)
    if writes and not module.check_mode:
        run_engine(module, stage.apply_stage, _stage_dir(module.params), [("received", "", writes)])
    return bool(writes), {"changes": [{"path": path, "action": "write", "what": "staged"} for path, _data, _mode in writes]}


def _export(module, layout):
    files = run_engine(module, stage.read_staged_files, _stage_dir(module.params), _staged_files(layout, module.params))
    return False, {"changes": [], "files": {name: base64.b64encode(data).decode("ascii") for name, data in files.items()}}


def _staged_files(layout, params) -> list:
    """The staging directory's files, relative to it: what every other node gets a copy of."""
    paths = [p for name in params["cas"] for p in stage.staged_paths(layout, _stage_dir(params), name).values()]
    if params["service_account_key"]:
        paths += list(sa_key.staged_paths(_stage_dir(params)))
    return sorted(os.path.relpath(p, _stage_dir(params)) for p in paths)


def _sa_staged(module, layout):
    if not module.params["service_account_key"]:
        return None
    return run_engine(module, sa_key.load_sa_staged, layout, _stage_dir(module.params))


def _sa_report(module, layout) -> dict:
    staged = _sa_staged(module, layout)
    return {} if staged is None else {"service_account_key": sa_key.sa_report(staged)}


def _apply(module, layout):
    params = module.params
    run_engine(module, phases.check_order, params["state_dir"], params["phase"])
    staged = run_engine(module, stage.load_staged, layout, _stage_dir(params), params["cas"])
    signed = {}
    if params["signed"] and "ca" in staged:
        signed = run_engine(module, requests.load_signed, layout, staged["ca"], _requests_dir(params),
                            {item["name"]: item["certificate"] for item in params["signed"]})
    plan = run_engine(module, phases.plan_phase, layout, staged, params["phase"], validity_days=params["validity_days"],
                      signed=signed, to_be_signed=module.check_mode)
    service_key = _sa_staged(module, layout)
    if service_key is not None:
        plan.changes += run_engine(module, sa_key.plan_sa_phase, service_key, params["phase"])
    result = {"changes": phases.phase_report(plan), "cas": stage.staged_report(staged)}
    if service_key is not None:
        result["service_account_key"] = sa_key.sa_report(service_key)
    if module._diff and plan.changed:
        result["diff"] = phases.phase_diff(plan)
    if plan.changed and not module.check_mode:
        run_engine(module, phases.apply_phase, plan, params["state_dir"])
    return plan.changed, result


def _requests_dir(params) -> str:
    return params["state_dir"].rstrip("/") + "/requests"


def _request(module, layout):
    params = module.params
    staged = run_engine(module, stage.load_staged, layout, _stage_dir(params), ["ca"])
    planned = run_engine(module, requests.plan_requests, layout, staged["ca"], _requests_dir(params))
    writes = [write for _path, write, _csr in planned if write is not None]
    if writes and not module.check_mode:
        run_engine(module, requests.apply_requests, _requests_dir(params), planned)
    return bool(writes), {"changes": [{"path": w[0], "action": "write", "what": "a request key"} for w in writes],
                          "requests": [{"name": path.rsplit("/", 1)[-1], "csr": csr.decode("ascii")} for path, _w, csr in planned]}


def _sign(module, layout):
    params = module.params
    staged = run_engine(module, stage.load_staged, layout, _stage_dir(params), ["ca"])
    signed = [{"name": item["name"],
               "certificate": run_engine(module, requests.sign_node_request, staged["ca"], item["csr"].encode("ascii"),
                                         validity_days=params["validity_days"]).decode("ascii")}
              for item in params["requests"]]
    return False, {"changes": [], "signed": signed}


def _record(module, layout):
    params = module.params
    staged = run_engine(module, stage.load_staged, layout, _stage_dir(params), params["cas"])
    report = stage.staged_report(staged)
    done = params["phase"] in phases.done_phases(params["state_dir"])
    if not done and not module.check_mode:
        fingerprints = {name: {k: v for k, v in item.items() if k.endswith("fingerprint")} for name, item in report.items()}
        run_engine(module, phases.record_phase, params["state_dir"], params["phase"], fingerprints)
    # promote installed every requested credential: the request keys are spare copies of live keys now
    spare = run_engine(module, requests.request_keys, _requests_dir(params)) if params["phase"] != phases.PREPARE else []
    if spare and not module.check_mode:
        for path in spare:
            os.unlink(path)
    changes = [{"path": path, "action": "remove", "what": "a request key, its credential installed"} for path in spare]
    return not done or bool(spare), dict({"changes": changes, "cas": report}, **_sa_report(module, layout))


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


def _kubectl(module, layout, *args) -> tuple:
    argv = kubectl_command(module, layout)
    if argv is None:
        module.fail_json(msg="kubectl is not on the PATH of this node; the %s step reads the cluster through it" % module.params["step"])
    return module.run_command(argv + ["--request-timeout", "10s"] + list(args))


def _new_cluster_ca(module, layout) -> bytes:
    staged = run_engine(module, stage.load_staged, layout, _stage_dir(module.params), ["ca"])
    return staged["ca"].new_pem


def _published(module, layout):
    new_pem = _new_cluster_ca(module, layout)
    rc, out, err = _kubectl(module, layout, "get", "configmaps", "--all-namespaces", "--field-selector",
                            "metadata.name=%s" % cluster.ROOT_CA_CONFIGMAP, "-o", "json")
    if rc != 0:
        module.fail_json(msg="kubectl get configmaps failed: %s" % err.strip()[-500:])
    return False, {"changes": [], "stale_namespaces": run_engine(module, cluster.stale_root_ca, out, new_pem)}


def _cluster_info(module, layout):
    # the CA joins must trust: the new one once promote has begun here (and is not rolled back), else the old one
    staged = run_engine(module, stage.load_staged, layout, _stage_dir(module.params), ["ca"])["ca"]
    promoted = phases.PROMOTE in run_engine(module, phases.started_phases, module.params["state_dir"])
    new_pem = staged.new_pem if promoted else dump_certificates([staged.old])
    rc, out, err = _kubectl(module, layout, "--namespace", "kube-public", "get", "configmap", "cluster-info", "-o", "json")
    if rc != 0:
        if "NotFound" in err:
            return False, {"changes": []}  # no bootstrap-token discovery in this cluster
        module.fail_json(msg="kubectl get configmap cluster-info failed: %s" % err.strip()[-500:])
    patch = run_engine(module, cluster.cluster_info_patch, out, new_pem)
    if patch is None:
        return False, {"changes": []}
    if not module.check_mode:
        rc, _out, err = _kubectl(module, layout, "--namespace", "kube-public", "patch", "configmap", "cluster-info",
                                 "--type", "merge", "--patch", json.dumps(patch))
        if rc != 0:
            module.fail_json(msg="kubectl patch configmap cluster-info failed: %s" % err.strip()[-500:])
    return True, {"changes": [{"path": "kube-public/cluster-info", "action": "write",
                               "what": "the %s cluster CA" % ("new" if promoted else "old")}]}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            step=dict(type="str", required=True, choices=list(STEPS)),
            phase=dict(type="str", choices=list(phases.PHASES)),
            cas=dict(type="list", elements="str", choices=list(KUBEADM_CA_NAMES), default=list(KUBEADM_CA_NAMES)),
            distribution=dict(type="str", default=KUBEADM_DISTRIBUTIONS[0], choices=list(KUBEADM_DISTRIBUTIONS)),
            data_dir=dict(type="path"),
            state_dir=dict(type="path", required=True),
            files=dict(type="dict", default={}, no_log=True),
            requests=dict(type="list", elements="dict", default=[]),
            signed=dict(type="list", elements="dict", default=[]),
            validity_days=dict(type="int", default=365),
            ca_validity_days=dict(type="int", default=3650),
            service_account_key=dict(type="bool", default=True),
        ),
        required_if=[("step", "apply", ("phase",)), ("step", "record", ("phase",)), ("step", "rollback", ("phase",))],
        supports_check_mode=True,
    )
    require_cryptography(module)
    layout = run_engine(module, get_layout, module.params["distribution"], data_dir=module.params["data_dir"])
    steps = {"stage": _stage, "export": _export, "receive": _receive, "request": _request, "sign": _sign, "apply": _apply,
             "record": _record, "rollback": _rollback, "published": _published, "cluster_info": _cluster_info}
    changed, result = False, {"changes": []}
    if module.params["step"] in steps:
        changed, result = steps[module.params["step"]](module, layout)
    result["done"] = run_engine(module, phases.done_phases, module.params["state_dir"])
    result["started"] = run_engine(module, phases.started_phases, module.params["state_dir"])
    result["staged"] = (run_engine(module, stage.is_staged, layout, _stage_dir(module.params), module.params["cas"])
                        and (not module.params["service_account_key"] or sa_key.is_sa_staged(layout, _stage_dir(module.params))))
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
