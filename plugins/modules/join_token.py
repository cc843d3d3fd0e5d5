#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: join_token
short_description: Put the new CA hash into every k3s / RKE2 join token a node keeps, keeping its credentials
version_added: 0.2.0
description:
  - After a CA rotation that changes k3s's C(hashCA) (a new root, or the first cross-signed rotation of a
    default-CA cluster), every secure token C(K10<hash>::<user>:<password>) a node reads must carry the new hash,
    or the node retries forever with C(token CA hash does not match the Cluster CA certificate hash).
  - This module rewrites the C(K10<hash>::) part of each token value in place and keeps every other byte of the
    file (comments, key order, quoting, other keys, line endings) and each location's own user and password.
  - "Locations: config YAML (C(token:) and C(agent-token:) at the top level, plain or quoted, one line), env files
    (C(K3S_TOKEN=), C(K3S_AGENT_TOKEN=) and the C(RKE2_) ones, with optional quotes and C(export)), unit files
    (C(--token X), C(--token=X), C(-t X), C(--agent-token X) in C(ExecStart), also across C(\\) continuation lines,
    and token variables in C(Environment=)), token files (one line; the trailing newline is kept)."
  - Token file references (C(token-file:), C(--token-file), C(K3S_TOKEN_FILE)) and variable references
    (C($K3S_TOKEN)) are left alone and reported, so the referenced file can be listed in O(token_files).
  - A token without a CA hash (a bare password, or C(K10) without a hash) is not checked against the CA by k3s,
    so a rotation does not break it; it is left alone and reported as C(bare), unless O(pin_bare=true).
  - A location whose password differs from the others keeps its own password (passwords are never copied
    between locations); the module warns, naming the locations, never the passwords.
  - Idempotent. A location that already carries the new hash is C(unchanged).
  - Every token value is secret. The result holds paths, keys, line numbers, users, statuses and the first
    12 hex digits of the old and new hashes, never a token or a password. Every value read is also registered
    with Ansible's output masking.
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
  - kubepki.certs._file_writes
attributes:
  diff_mode:
    details:
      - "The diff names each file and shows C(line N: key: K10<hash prefix>...::<user>:<redacted>) for each
        token that changes; no token, password or other line content."
options:
  ca_file:
    description:
      - The B(new) C(server-ca.crt) bundle (as it will be served by C(/cacerts) after the restart). Its k3s
        C(hashCA) is the new hash. The C(cryptography) Python library is needed on the node for a multi-certificate
        bundle.
      - Exactly one of O(ca_file) and O(ca_hash) is required.
    type: path
  ca_hash:
    description: The new CA hash itself, 64 hex digits.
    type: str
  config_files:
    description: Config YAML files. Glob patterns are expanded (for example C(/etc/rancher/k3s/config.yaml.d/*.yaml)).
    type: list
    elements: path
    default: []
  env_files:
    description: Env files (systemd C(EnvironmentFile=) or shell files sourced by an init script).
    type: list
    elements: path
    default: []
  unit_files:
    description: systemd unit files (or drop-ins) whose C(ExecStart=) or C(Environment=) may carry a token.
    type: list
    elements: path
    default: []
  token_files:
    description: Files holding one token (C(server/token), C(server/agent-token), files named by C(--token-file)).
    type: list
    elements: path
    default: []
  distribution:
    description:
      - k3s or rke2. Selects the token variables of env and unit files (C(K3S_*) or C(RKE2_*); both when not
        set) and, with O(discover=true), the layout table's locations.
    type: str
    choices: [k3s, rke2]
  discover:
    description:
      - Add every location of the O(distribution)'s layout table that exists on the node and holds a token
        (config.yaml and config.yaml.d/*.yaml, the env files, the unit files, C(server/token) and
        C(server/agent-token)). Requires O(distribution).
    type: bool
    default: false
  data_dir:
    description: The distribution's data dir when not the default (for the discovered token files).
    type: path
  pin_bare:
    description:
      - Turn tokens without a CA hash into secure tokens with the new hash, keeping the password. A bare password
        becomes C(K10<hash>::server:<password>) (C(node:) for agent-token locations; k3s replaces the user part
        with C(server) or C(node) when it authenticates, so the user written is cosmetic).
      - Off by default, because it changes behaviour beyond the rotation. The node then validates the CA hash; it
        must be the hash the servers serve after their restart.
    type: bool
    default: false
  backup:
    description: Copy each file to C(<file>.<UTC time>.bak) (mode 0600) before rewriting it.
    type: bool
    default: true
  backup_dir:
    description:
      - Copy every token file found, changed or not, into this directory at its absolute path instead (mode 0600,
        directories 0700), for example C(/var/lib/kubepki/backup/<rotation id>) so the file lands in
        C(/var/lib/kubepki/backup/<rotation id>/etc/rancher/k3s/config.yaml). The layout of M(kubepki.certs.backup),
        which the C(kubepki.certs.rollback) role restores from. Takes precedence over O(backup).
      - A copy already there is kept (the first copy is the state before the rotation; a rerun does not replace it
        with what the first run wrote). Copies count as a change.
    type: path
notes:
  - Files are written through a temporary file that is renamed into place, keeping mode and owner. Symbolic links
    are followed and the file they point to is rewritten (once, however many listed paths lead to it).
  - After a unit file changes, systemd needs C(daemon-reload) (see RV(daemon_reload_needed)).
  - Update every node's tokens, servers included, B(before) restarting any node (reference pitfall 2).
seealso:
  - module: kubepki.certs.ca_chain
"""

EXAMPLES = r"""
- name: New hash into every token this k3s node keeps
  kubepki.certs.join_token:
    ca_file: /var/lib/rancher/k3s/server/tls/server-ca.crt
    distribution: k3s
    discover: true
  register: tokens

- name: Explicit locations, hash computed elsewhere (for example from ca_rotation's token_ca_hash)
  kubepki.certs.join_token:
    ca_hash: "{{ rotation.token_ca_hash }}"
    distribution: rke2
    config_files:
      - /etc/rancher/rke2/config.yaml
      - /etc/rancher/rke2/config.yaml.d/*.yaml
    env_files:
      - /etc/default/rke2-agent
    unit_files:
      - /etc/systemd/system/rke2-agent.service

- name: Reload systemd when a unit file changed
  ansible.builtin.systemd_service:
    daemon_reload: true
  when: tokens.daemon_reload_needed
"""

RETURN = r"""
ca_hash:
  description: The new CA hash (k3s hashCA of O(ca_file), or O(ca_hash)). Not a secret.
  returned: always
  type: str
locations:
  description:
    - One entry per token value, reference, or listed file without a token.
    - C(status) is C(changed) (rewritten, or would be in check mode), C(unchanged) (already the new hash),
      C(bare) (no CA hash; left alone), C(file-reference), C(variable-reference), C(no-token) or C(missing).
    - Other keys when known - C(kind) (config, env, unit, token_file), C(key) (as written, for example C(token),
      C(K3S_TOKEN), C(--token)), C(role) (token or agent-token), C(line), C(form) (secure, unpinned, bare),
      C(bootstrap), C(user), C(old_hash) and C(new_hash) (first 12 hex digits), C(password_group) (locations with
      the same number share a password), C(reference) (the referenced file or variable), C(file) (the real path
      when the listed path is a symbolic link).
  returned: always
  type: list
  elements: dict
changed_files:
  description: Files rewritten (or that would be, in check mode).
  returned: always
  type: list
  elements: str
backup_files:
  description: Backups written before rewriting (with O(backup_dir), every copy added to it; in check mode, those it
    would add).
  returned: always
  type: list
  elements: str
daemon_reload_needed:
  description: A unit file changed; run C(systemctl daemon-reload) before restarting.
  returned: always
  type: bool
distinct_passwords:
  description: How many different passwords the token locations hold (normally 1, or 2 with a separate agent token).
  returned: always
  type: int
file_references:
  description: Token files referenced by C(token-file) keys, flags or variables, not rewritten by this run.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import JOIN_TOKEN_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import require_cryptography, run_engine
from ansible_collections.kubepki.certs.plugins.module_utils._pki.token_grammar import ca_hash_of_file, check_ca_hash
from ansible_collections.kubepki.certs.plugins.module_utils._pki.token_locations import discover_locations
from ansible_collections.kubepki.certs.plugins.module_utils._pki.token_plan import (
    apply_token_plan,
    pending_backups,
    plan_diff,
    plan_join_tokens,
    plan_report,
)

_MASK_MIN_LENGTH = 4


def _token_env_vars(distribution):
    names = [distribution] if distribution else JOIN_TOKEN_DISTRIBUTIONS
    variables = []
    for name in names:
        variables.extend(get_layout(name).token_env_vars)
    return tuple(variables)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ca_file=dict(type="path"),
            ca_hash=dict(type="str", no_log=False),
            config_files=dict(type="list", elements="path", default=[]),
            env_files=dict(type="list", elements="path", default=[]),
            unit_files=dict(type="list", elements="path", default=[]),
            token_files=dict(type="list", elements="path", default=[], no_log=False),
            distribution=dict(type="str", choices=list(JOIN_TOKEN_DISTRIBUTIONS)),
            discover=dict(type="bool", default=False),
            data_dir=dict(type="path"),
            pin_bare=dict(type="bool", default=False),
            backup=dict(type="bool", default=True),
            backup_dir=dict(type="path"),
        ),
        mutually_exclusive=[("ca_file", "ca_hash")],
        required_one_of=[("ca_file", "ca_hash")],
        required_if=[("discover", True, ("distribution",))],
        supports_check_mode=True,
    )
    params = module.params
    if params["ca_file"]:
        require_cryptography(module)
        new_hash = run_engine(module, ca_hash_of_file, params["ca_file"])
    else:
        new_hash = run_engine(module, check_ca_hash, params["ca_hash"])
    discovered = []
    if params["discover"]:
        layout = get_layout(params["distribution"], data_dir=params["data_dir"])
        discovered = discover_locations(layout)
    plan = run_engine(
        module, plan_join_tokens, new_hash=new_hash, config_files=params["config_files"],
        env_files=params["env_files"], unit_files=params["unit_files"], token_files=params["token_files"],
        discovered=discovered, pin_bare=params["pin_bare"], token_env_vars=_token_env_vars(params["distribution"]))
    # Defence in depth: whatever is read is masked in any output Ansible produces for this task.
    for value in plan.secrets:
        if len(value) >= _MASK_MIN_LENGTH:
            module.no_log_values.add(value)
    result = plan_report(plan)
    result["backup_files"] = []
    for warning in plan.warnings:
        module.warn(warning)
    pending = pending_backups(plan, params["backup_dir"])
    if (plan.changed or pending) and not module.check_mode:
        result["backup_files"] = run_engine(module, apply_token_plan, plan, backup=params["backup"],
                                            backup_root=params["backup_dir"])
    elif pending:
        result["backup_files"] = pending
    if module._diff and plan.changed:
        result["diff"] = plan_diff(plan)
    module.exit_json(changed=plan.changed or bool(pending), **result)


if __name__ == "__main__":
    main()
