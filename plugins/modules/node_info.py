#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: node_info
short_description: Describe a k3s, RKE2, kubeadm or RKE1 node's PKI in one call
version_added: 0.2.0
description:
  - Reads, in one pass, what a rotation's preflight needs from a node. It returns the role (server when the tls
    directory exists), the distribution's layout (paths, unit names, ports, token locations from the collection's
    one layout table), the binary version and whether it meets O(minimum_version), and the SHA-256 fingerprints of
    the live CAs. It also returns the join-token CA hash of the live C(server-ca.crt), the files that hold a join
    token (never the token), and the free space.
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
  - kubepki.certs._attributes.info_module
  - kubepki.certs._cryptography_dep
options:
  distribution:
    description: The distribution.
    type: str
    required: true
    choices: [k3s, rke2, kubeadm, rke1]
  data_dir:
    description: Overrides the distribution's data directory.
    type: path
  binary:
    description: The distribution binary to ask for its version. Defaults to the program name, found on the PATH.
    type: str
  minimum_version:
    description: Minimum version, for example C(v1.26.2). RV(version_ok) says whether the binary meets it.
    type: str
  health:
    description:
      - On a server, also ask the apiserver's C(/readyz) through the node's admin kubectl (from the layout table)
        and return RV(healthy). Agents are not asked.
    type: bool
    default: false
  check_version:
    description: Run the binary with C(--version). Off for nodes without the binary (a controller, a staging host).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Preflight facts of a k3s node
  kubepki.certs.node_info:
    distribution: k3s
    minimum_version: v1.26.2
  register: node
"""

RETURN = r"""
role:
  description: C(server) or C(agent).
  returned: always
  type: str
service:
  description: The service (unit) name of this node's role.
  returned: always
  type: str
layout:
  description: The distribution layout (tls_dir, data_dir, unit names, supervisor_port, token files, ...).
  returned: always
  type: dict
version:
  description: The binary's version, for example C(v1.31.6+k3s1).
  returned: when check_version
  type: str
version_ok:
  description: Whether the version meets O(minimum_version).
  returned: when check_version
  type: bool
ca_fingerprints:
  description: SHA-256 fingerprints of the first certificate of each live CA bundle (servers).
  returned: always
  type: dict
token_ca_hash:
  description: The join-token CA hash of the live C(server-ca.crt) (servers).
  returned: always
  type: str
server_ca_sha256:
  description:
    - SHA-256 of the server CA bundle the node uses now (servers C(server/tls/server-ca.crt), agents
      C(agent/server-ca.crt), downloaded at every start). Null when absent.
  returned: always
  type: str
token_locations:
  description:
    - Files from the layout table that hold a join token setting (or a reference to one), with their kind (config,
      env, unit, token_file), the keys as written, and why a file cannot be rewritten (C(problem)). No values.
  returned: always
  type: list
  elements: dict
free_bytes:
  description: Free bytes on the data directory's file system.
  returned: always
  type: int
healthy:
  description: The server's C(/readyz) answered C(ok) (O(health=true)); null on agents or when not asked.
  returned: always
  type: bool
health_problem:
  description: Why the server is not healthy (kubectl's last error line), or null.
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.health import readyz_problem
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import (
    kubectl_command,
    require_cryptography,
    run_engine,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.node import describe_node


def main():
    module = AnsibleModule(
        argument_spec=dict(
            distribution=dict(type="str", required=True, choices=list(DISTRIBUTIONS)),
            data_dir=dict(type="path"),
            binary=dict(type="str"),
            minimum_version=dict(type="str"),
            check_version=dict(type="bool", default=True),
            health=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    require_cryptography(module)
    layout = run_engine(module, get_layout, module.params["distribution"], data_dir=module.params["data_dir"])
    version_text = None
    if module.params["check_version"]:
        binary = module.params["binary"] or layout.program
        path = binary if "/" in binary else module.get_bin_path(binary, required=False)
        if not path:
            module.fail_json(msg="%s not found on the PATH; set binary, or check_version=false" % binary)
        rc, out, err = module.run_command([path, "--version"])
        if rc != 0:
            module.fail_json(msg="%s --version failed (rc %d): %s" % (path, rc, (err or out).strip()[:300]))
        version_text = out
    info = run_engine(module, describe_node, layout, version_text=version_text,
                      minimum_version=module.params["minimum_version"])
    info["healthy"], info["health_problem"] = None, None
    if module.params["health"] and info["role"] == "server":
        kubectl = kubectl_command(module, layout)
        if kubectl is None or not os.path.exists(kubectl[0]):
            info["healthy"], info["health_problem"] = False, "%s not found" % layout.kubectl[0]
        else:
            rc, out, err = module.run_command(kubectl + ["get", "--raw", "/readyz"])
            info["health_problem"] = readyz_problem(rc, out, err)
            info["healthy"] = info["health_problem"] is None
    module.exit_json(changed=False, **info)


if __name__ == "__main__":
    main()
