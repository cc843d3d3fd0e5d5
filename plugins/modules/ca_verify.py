#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ca_verify
short_description: Prove a staged k3s or RKE2 CA rotation set safe before it is loaded
version_added: 0.2.0
description:
  - Runs upstream C(rotate-ca)'s checks on a staged set (each new CA bundle holds more than one certificate, its
    first certificate chains to a current root through certificates of the new bundle, the first key matches the
    first certificate, the current first service-account key is kept), plus the trust-continuity matrix per CA.
    The matrix checks three things. A leaf of the new CA, presented with the new bundle, verifies for a client
    that trusts only the current CA. A leaf of the current CA verifies for a client that holds the new bundle. A
    leaf of the new CA verifies for a client that holds the new bundle.
  - Also checks that no added certificate outlives its issuer.
  - Fails naming the CA and the check. Files that are not staged are skipped, as k3s skips them.
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
  - kubepki.certs._attributes.info_module
  - kubepki.certs._cryptography_dep
options:
  current_path:
    description: The live tls directory.
    type: path
    required: true
  staging_path:
    description: The directory later passed to C(certificate rotate-ca --path) (the set is in its C(tls/)).
    type: path
    required: true
  distribution:
    description: The distribution.
    type: str
    required: true
    choices: [k3s, rke2]
  allow_disruptive:
    description:
      - Do not fail on the continuity checks a new root breaks by design (for a C(new_root) rotation loaded with
        C(--force)). The results still show them.
    type: bool
    default: false
seealso:
  - module: kubepki.certs.ca_rotation
"""

EXAMPLES = r"""
- name: Verify the staged rotation set
  kubepki.certs.ca_verify:
    current_path: /var/lib/rancher/k3s/server/tls
    staging_path: /var/lib/kubepki/rotate-ca/server
    distribution: k3s
"""

RETURN = r"""
checks:
  description: Every check with the CA, the check name, the outcome and a detail.
  returned: always
  type: list
  elements: dict
  sample: [{"ca": "server-ca", "check": "new_leaf_trusted_by_current_clients", "ok": true, "detail": "..."}]
failed_checks:
  description: The checks that failed (and count as failures).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import ROTATE_CA_DISTRIBUTIONS
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import require_cryptography, run_engine
from ansible_collections.kubepki.certs.plugins.module_utils._pki.verify import failures, verify_staging


def main():
    module = AnsibleModule(
        argument_spec=dict(
            current_path=dict(type="path", required=True),
            staging_path=dict(type="path", required=True),
            distribution=dict(type="str", required=True, choices=list(ROTATE_CA_DISTRIBUTIONS)),
            allow_disruptive=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    require_cryptography(module)
    results = run_engine(module, verify_staging, current_path=module.params["current_path"],
                         staging_path=module.params["staging_path"], distribution=module.params["distribution"])
    failed = failures(results, allow_disruptive=module.params["allow_disruptive"])
    output = {"checks": [r.as_dict() for r in results], "failed_checks": [r.as_dict() for r in failed]}
    if failed:
        module.fail_json(msg="staged set is not safe to load: " + "; ".join(
            "%s %s: %s" % (r.ca, r.check, r.detail) for r in failed), **output)
    module.exit_json(changed=False, **output)


if __name__ == "__main__":
    main()
