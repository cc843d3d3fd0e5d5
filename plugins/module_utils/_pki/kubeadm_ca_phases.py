# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The files of one node in each phase of a kubeadm CA rotation, as data: what each file must hold once the phase is
done, compared with what it holds now (so a rerun after an interruption writes only what is left).

For each rotated CA (old O, new N, N cross-signed by O: X):

==========================  ==================  ==================  =====================
file                        prepare             promote             finalize
==========================  ==================  ==================  =====================
pki/<ca>.crt (bundle)       O, N                N, O                N
pki/<ca>.key                O's                 N's                 N's
pki/<ca>-next.crt/.key      N (single-file      N                   removed
                            flags point here)
kubeconfig CA data          O, N                N, O                N
serving leaves              issued by N, + X    issued by N, + X    issued by N alone
client leaves, kubeconfig   as they are (O)     issued by N         issued by N
credentials
==========================  ==================  ==================  =====================

Serving leaves move to N at prepare, served with X, so a client holding N alone works from prepare on and one holding O
alone until finalize. Apply keeps, per phase, a backup of every file as it was before the phase first touched it and a
list of the files the phase created; rollback restores exactly that.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
    build_leaf_certificate,
    dump_certificates,
    fingerprint_sha256,
    iso8601,
    is_directly_issued_by,
    load_certificates,
    utcnow,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import Change, summary_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    atomic_write,
    ensure_dir,
    file_mode,
    read_bytes,
    write_backup,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import (
    generate_private_key,
    key_matches_certificate,
    key_type_of,
    load_private_key,
    same_key,
    serialize_private_key,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeconfig import decode_embedded
from ansible_collections.kubepki.certs.plugins.module_utils._pki.leaf_renewal import (
    b64,
    kubeadm_profile,
    kubeconfig_certificate,
    replace_user_data,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.trees import backup_tree

PREPARE, PROMOTE, FINALIZE = "prepare", "promote", "finalize"
PHASES = (PREPARE, PROMOTE, FINALIZE)
CREATED_LIST = "created.json"  # in a phase's backup tree: files the phase made (rollback removes them)


@dataclass(frozen=True)
class FileChange:
    path: str
    data: bytes | None  # None: remove the file
    mode: int
    what: str


@dataclass
class PhasePlan:
    phase: str
    changes: list = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def bundle_for(phase: str, ca) -> list:
    return {PREPARE: [ca.old, ca.new], PROMOTE: [ca.new, ca.old], FINALIZE: [ca.new]}[phase]


def _fingerprints(certificates) -> list:
    return [fingerprint_sha256(c) for c in certificates]


def _plan_bundle(ca, phase: str, changes: list) -> None:
    if not os.path.exists(ca.live_cert):
        return  # a worker has ca.crt only: the other CAs are not there
    desired = bundle_for(phase, ca)
    current = load_certificates(read_bytes(ca.live_cert, what="CA bundle"), source=ca.live_cert)
    if _fingerprints(current) != _fingerprints(desired):
        names = ["old" if c is ca.old else "new" for c in desired]
        changes.append(FileChange(ca.live_cert, dump_certificates(desired), file_mode(ca.live_cert) or PUBLIC_FILE_MODE,
                                  "trust %s" % " + ".join(names)))


def _plan_ca_key(ca, phase: str, changes: list) -> None:
    if not os.path.exists(ca.live_key):
        return
    data = read_bytes(ca.live_key, what="CA key")
    if phase != PREPARE and ca.new_key is not None and data == serialize_private_key(ca.new_key):
        return  # the new key in place already (as written here): no need to parse it
    current = load_private_key(data, source=ca.live_key)
    if phase == PREPARE:
        if not key_matches_certificate(current, ca.old):
            raise InvalidInputError("%s is not the old %s CA's key: this node is past prepare; roll back promote first"
                                    % (ca.live_key, ca.name), path=ca.live_key)
        return
    if ca.new_key is None:
        raise InvalidInputError("the staged %s CA on this node has no key, but %s exists: copy the control-plane staging "
                                "files here" % (ca.name, ca.live_key), path=ca.live_key)
    if not same_key(current, ca.new_key):
        changes.append(FileChange(ca.live_key, serialize_private_key(ca.new_key), PRIVATE_FILE_MODE, "the new CA's key"))


def next_paths(ca) -> tuple:
    return ca.live_cert[:-len(".crt")] + "-next.crt", ca.live_key[:-len(".key")] + "-next.key"


def _plan_single_file_flags(layout, ca, phase: str, changes: list) -> None:
    """pki/<ca>-next.* for the flags that cannot take a bundle, and those flags in the static pod manifests."""
    next_cert, next_key = next_paths(ca)
    for pod, (ca_name, flags) in layout.extra["ca_rotation_single_file_flags"].items():
        manifest = os.path.join(layout.extra["manifests_dir"], pod + ".yaml")
        if ca_name != ca.name or not os.path.exists(manifest):
            continue
        if phase == FINALIZE:
            changes += [FileChange(p, None, 0, "the separate new-CA file, no longer named") for p in (next_cert, next_key)
                        if os.path.exists(p)]
        else:
            if ca.new_key is None:
                raise InvalidInputError("%s names the %s CA's key but the staged CA on this node has none" % (manifest, ca.name),
                                        path=manifest)
            for path, data, mode in ((next_key, serialize_private_key(ca.new_key), PRIVATE_FILE_MODE),
                                     (next_cert, dump_certificates([ca.new]), PUBLIC_FILE_MODE)):
                if not os.path.exists(path) or read_bytes(path) != data:
                    changes.append(FileChange(path, data, mode, "the new CA alone, for flags that take no bundle"))
        target = {"cert": ca.live_cert if phase == FINALIZE else next_cert,
                  "key": ca.live_key if phase == FINALIZE else next_key}
        text = read_bytes(manifest, what="static pod manifest").decode("utf-8")
        new_text = text
        for flag, kind in flags.items():
            new_text = re.sub(r"^([ \t]*- %s=).*$" % re.escape(flag), lambda m, v=target[kind]: m.group(1) + v, new_text,
                              flags=re.MULTILINE)
        if new_text != text:
            changes.append(FileChange(manifest, new_text.encode("utf-8"), file_mode(manifest) or PRIVATE_FILE_MODE,
                                      "%s = %s" % (", ".join(flags), "the CA files" if phase == FINALIZE else "the new-CA files")))


def _kubeconfig_paths(layout) -> list:
    return [p for p in layout.kubeconfigs if os.path.exists(p)]


def _plan_kubeconfig_trust(layout, ca, phase: str, changes: list) -> None:
    if ca.name != layout.api_ca:
        return
    desired = bundle_for(phase, ca)
    for path in _kubeconfig_paths(layout):
        text = read_bytes(path, what="kubeconfig").decode("utf-8")
        match = re.search(r"^\s*certificate-authority-data:[ \t]*(\S+)[ \t]*$", text, re.MULTILINE)
        if match is None:
            continue  # a certificate-authority file: the bundle file itself
        current = load_certificates(decode_embedded(match.group(1), source=path), source=path)
        if _fingerprints(current) != _fingerprints(desired):
            new_text = replace_user_data(text, "certificate-authority-data", b64(dump_certificates(desired)), path)
            changes.append(FileChange(path, new_text.encode("utf-8"), file_mode(path) or PRIVATE_FILE_MODE,
                                      "certificate-authority-data = %s" % " + ".join("old" if c is ca.old else "new" for c in desired)))


def _reissued(certificate, ca, path: str, validity_days: int, now):
    # a new key of the type the certificate has (its own key is not parsed: the certificate names the type)
    new_key = generate_private_key(key_type_of(certificate.public_key()))
    new_certificate = build_leaf_certificate(subject_public_key=new_key.public_key(), issuer_certificate=ca.new,
                                             issuer_key=ca.new_key, validity_days=validity_days, now=now,
                                             **kubeadm_profile(certificate, path))
    return new_certificate, new_key


def _need_issuer_key(ca, path: str) -> None:
    if ca.new_key is None:
        raise InvalidInputError("%s must be re-issued by the new %s CA but the staged CA on this node has no key"
                                % (path, ca.name), path=path)


def _plan_leaves(layout, ca, phase: str, changes: list, validity_days: int, now) -> None:
    usages = layout.extra["usages"]
    for leaf in (leaf for leaf in layout.leaves if leaf.ca == ca.name):
        cert_path, key_path = os.path.join(layout.tls_dir, leaf.cert), os.path.join(layout.tls_dir, leaf.key)
        if not os.path.exists(cert_path):
            continue
        chain = load_certificates(read_bytes(cert_path, what="certificate"), source=cert_path)
        serving = "server_auth" in usages.get(leaf.name, ())
        by_new = is_directly_issued_by(chain[0], ca.new)
        if phase == FINALIZE or (phase == PREPARE and not serving):
            if phase == FINALIZE and not by_new:
                raise InvalidInputError("%s is not issued by the new %s CA yet: promote every node before finalize"
                                        % (cert_path, ca.name), path=cert_path)
            if phase == FINALIZE and len(chain) > 1:
                changes.append(FileChange(cert_path, dump_certificates(chain[:1]), file_mode(cert_path) or PUBLIC_FILE_MODE,
                                          "served without the cross-signed CA"))
            continue
        tail = [ca.cross] if serving else []
        if by_new:
            if _fingerprints(chain[1:]) != _fingerprints(tail):
                changes.append(FileChange(cert_path, dump_certificates(chain[:1] + tail), file_mode(cert_path) or PUBLIC_FILE_MODE,
                                          "served with the cross-signed CA"))
            continue
        _need_issuer_key(ca, cert_path)
        certificate, new_key = _reissued(chain[0], ca, cert_path, validity_days, now)
        changes.append(FileChange(key_path, serialize_private_key(new_key), PRIVATE_FILE_MODE, "a new key"))
        changes.append(FileChange(cert_path, dump_certificates([certificate] + tail), file_mode(cert_path) or PUBLIC_FILE_MODE,
                                  "issued by the new CA" + (", served with the cross-signed CA" if tail else "")))


def _plan_kubeconfig_credentials(layout, ca, phase: str, changes: list, validity_days: int, now, signed: dict,
                                 to_be_signed: bool) -> None:
    """promote: every kubeconfig's client certificate (embedded, or a file such as kubelet-client-current.pem), issued
    here, or on a node without CA keys taken from ``signed`` (kubeconfig path -> (certificate, key)); ``to_be_signed``
    (a plan never applied: check mode) reports a missing one instead of failing."""
    if ca.name != layout.api_ca or phase == PREPARE:
        return
    for path in _kubeconfig_paths(layout):
        pending = next((c for c in changes if c.path == path), None)
        text = (pending.data if pending is not None else read_bytes(path, what="kubeconfig")).decode("utf-8")
        certificate, file_path = kubeconfig_certificate(path, text)
        if certificate is None or is_directly_issued_by(certificate, ca.new):
            continue
        if phase == FINALIZE:
            raise InvalidInputError("the client certificate of %s is not issued by the new CA yet: promote every node "
                                    "before finalize" % path, path=path)
        if ca.new_key is None and path not in signed and to_be_signed:
            changes.append(FileChange(path, b"", PRIVATE_FILE_MODE, "client certificate to be signed by a control-plane node"))
            continue
        if ca.new_key is None:
            if path not in signed:
                raise InvalidInputError("%s needs a certificate of the new CA and this node has no CA key: request one "
                                        "(step request) and have a control-plane node sign it (step sign)" % path, path=path)
            new_certificate, new_key = signed[path]
        else:
            new_certificate, new_key = _reissued(certificate, ca, path, validity_days, now)
        cert_pem, key_pem = dump_certificates([new_certificate]), serialize_private_key(new_key)
        if file_path is None:
            new_text = replace_user_data(text, "client-certificate-data", b64(cert_pem), path)
            new_text = replace_user_data(new_text, "client-key-data", b64(key_pem), path)
            what = (pending.what + "; " if pending is not None else "") + "client certificate issued by the new CA"
            if pending is not None:
                changes.remove(pending)
            changes.append(FileChange(path, new_text.encode("utf-8"), file_mode(path) or PRIVATE_FILE_MODE, what))
        else:
            changes.append(FileChange(file_path, cert_pem + key_pem, PRIVATE_FILE_MODE, "client certificate issued by the new CA"))


def plan_phase(layout, staged: dict, phase: str, *, validity_days: int = 365, now=None, signed=None,
               to_be_signed: bool = False) -> PhasePlan:
    """Every file of this node that does not yet hold what ``phase`` puts there, for each CA of ``staged``.
    ``signed``: kubeconfig credentials signed elsewhere for a node without CA keys (kubeadm_ca_requests.load_signed)."""
    if phase not in PHASES:
        raise InvalidInputError("unknown phase %r; the phases are %s" % (phase, ", ".join(PHASES)))
    moment = now or utcnow()
    plan = PhasePlan(phase)
    for ca in staged.values():
        _plan_ca_key(ca, phase, plan.changes)
        _plan_bundle(ca, phase, plan.changes)
        _plan_single_file_flags(layout, ca, phase, plan.changes)
        _plan_kubeconfig_trust(layout, ca, phase, plan.changes)
        _plan_leaves(layout, ca, phase, plan.changes, validity_days, moment)
    # credentials after the trust lines: a kubeconfig changed by both is written once, with both
    for ca in staged.values():
        _plan_kubeconfig_credentials(layout, ca, phase, plan.changes, validity_days, moment, signed or {}, to_be_signed)
    return plan


# --- apply, rollback, state ------------------------------------------------------------------------------------------

def phase_tree(state_dir: str, phase: str):
    return backup_tree(os.path.join(state_dir, "backup"), phase)


def apply_phase(plan: PhasePlan, state_dir: str) -> list:
    """Back up each file the first time this phase touches it (a resumed phase keeps the pre-phase copy), record the
    files it creates, then write or remove atomically. Returns the paths changed."""
    tree = phase_tree(state_dir, plan.phase)
    created_path = os.path.join(tree.root, CREATED_LIST)
    created = _read_json(created_path, [])
    for change in plan.changes:
        copy = tree.copy_of(change.path)
        if os.path.exists(change.path):
            if not os.path.exists(copy) and change.path not in created:
                write_backup([(copy, read_bytes(change.path), file_mode(change.path) or PRIVATE_FILE_MODE)])
        elif change.path not in created:
            created.append(change.path)
            ensure_dir(tree.root, mode=PRIVATE_DIR_MODE)
            atomic_write(created_path, json.dumps(created, indent=1).encode("utf-8"), mode=PRIVATE_FILE_MODE)
    for change in plan.changes:
        if change.data is None:
            os.unlink(change.path)
        else:
            atomic_write(change.path, change.data, mode=change.mode)
    return [c.path for c in plan.changes]


def plan_rollback(state_dir: str, phase: str) -> tuple:
    """(restores: [(live path, copy path)], removals: [paths the phase created that exist]) of ``phase``."""
    tree = phase_tree(state_dir, phase)
    restores = []
    for directory, _dirs, files in os.walk(tree.root):
        for name in files:
            copy = os.path.join(directory, name)
            if copy != os.path.join(tree.root, CREATED_LIST):
                restores.append((tree.live_path_of(copy), copy))
    removals = [p for p in _read_json(os.path.join(tree.root, CREATED_LIST), []) if os.path.exists(p)]
    return sorted(restores), removals


def apply_rollback(state_dir: str, phase: str, restores: list, removals: list, now=None) -> None:
    for live, copy in restores:
        atomic_write(live, read_bytes(copy), mode=file_mode(copy) or PRIVATE_FILE_MODE)
    for path in removals:
        os.unlink(path)
    tree = phase_tree(state_dir, phase)
    if os.path.isdir(tree.root):  # kept, out of the way of a later run of the same phase
        os.rename(tree.root, "%s.rolled-back-%s" % (tree.root, iso8601(now or utcnow()).replace(":", "")))
    forget_phase(state_dir, phase)


def _read_json(path: str, default):
    if not os.path.exists(path):
        return default
    try:
        return json.loads(read_bytes(path).decode("utf-8"))
    except ValueError:
        raise InvalidInputError("%s is not valid JSON; move it away to start this record afresh" % path, path=path) from None


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, "state.json")


def read_state(state_dir: str) -> dict:
    return _read_json(state_path(state_dir), {"phases": {}})


def done_phases(state_dir: str) -> list:
    phases = read_state(state_dir).get("phases", {})
    return [p for p in PHASES if p in phases]


def started_phases(state_dir: str) -> list:
    """Phases with a backup tree here: begun on this node and not rolled back (done or interrupted)."""
    return [p for p in PHASES if os.path.isdir(phase_tree(state_dir, p).root)]


def _write_state(state_dir: str, state: dict) -> None:
    ensure_dir(state_dir, mode=PRIVATE_DIR_MODE)
    atomic_write(state_path(state_dir), json.dumps(state, indent=1, sort_keys=True).encode("utf-8"), mode=PRIVATE_FILE_MODE)


def record_phase(state_dir: str, phase: str, cas: dict, now=None) -> None:
    state = read_state(state_dir)
    state.setdefault("phases", {})[phase] = iso8601(now or utcnow())
    state["cas"] = cas
    _write_state(state_dir, state)


def forget_phase(state_dir: str, phase: str) -> None:
    state = read_state(state_dir)
    if phase in state.get("phases", {}):
        del state["phases"][phase]
        _write_state(state_dir, state)


def check_order(state_dir: str, phase: str) -> None:
    """A phase runs after the one before it is recorded on this node, and not after the one after it."""
    done = done_phases(state_dir)
    index = PHASES.index(phase)
    if index and PHASES[index - 1] not in done:
        raise InvalidInputError("%s before %s: %s is not recorded as done on this node (%s)"
                                % (phase, PHASES[index - 1], PHASES[index - 1], state_path(state_dir)))
    later = [p for p in PHASES[index + 1:] if p in done]
    if later:
        raise InvalidInputError("%s is recorded as done on this node; roll it back before running %s again"
                                % (", ".join(later), phase))


def phase_report(plan: PhasePlan) -> list:
    return [{"path": c.path, "action": "remove" if c.data is None else "write", "what": c.what} for c in plan.changes]


def phase_diff(plan: PhasePlan) -> dict:
    return summary_diff("kubeadm CA rotation, %s" % plan.phase,
                        [Change(c.path, "present" if os.path.exists(c.path) else "absent",
                                "absent" if c.data is None else c.what) for c in plan.changes])
