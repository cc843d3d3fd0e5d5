#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rke1_external_ca
short_description: Sign the CSRs of C(rke cert generate-csr) with a CA the operator holds, for C(rke up --custom-certs)
version_added: 0.4.0
description:
  - Runs where the RKE1 C(cluster.yml) and the operator's CA certificate and key are (the controller or the rke
    workstation); the CA key is only read.
  - First checks that O(cert_dir) holds a C(<name>-csr.pem) and C(<name>-key.pem) for every certificate
    C(rke cert generate-csr) writes for O(cluster_yml) - C(kube-apiserver), C(kube-controller-manager),
    C(kube-scheduler), C(kube-proxy), C(kube-node), C(kube-admin), C(kube-apiserver-proxy-client), C(kube-etcd-<host>)
    per etcd node and, with C(services.kubelet.generate_serving_certificate), C(kube-kubelet-<host>) per node (C(<host>)
    is the internal address, else the address, with dots as dashes) - and that each key belongs to its CSR. Anything
    missing is refused, by name, before any file is written.
  - Then signs every CSR of O(cert_dir) as C(<name>.pem) with the CA of O(ca_cert) and O(ca_key), keeping the CSR's
    subject and DNS/IP names; extended key usages are client auth always and server auth for the certificates rke
    makes serving ones (C(kube-apiserver), C(kube-apiserver-proxy-client), C(kube-etcd-*), C(kube-kubelet-*)), whatever
    the request asks for.
  - Writes what C(rke up --custom-certs --cert-dir <cert_dir>) reads besides - C(kube-ca.pem) and
    C(kube-apiserver-requestheader-ca.pem), both the CA certificate without its key (rke's documentation uses the
    cluster CA for the request-header CA too), and the service-account token key C(kube-service-account-token-key.pem)
    (RSA 2048, generated when absent; C(rke cert generate-csr) does not make it) with its certificate
    C(kube-service-account-token.pem) signed by the CA.
  - Idempotent - a certificate already in O(cert_dir) for the CSR's key, subject and names, issued by this CA and
    valid now is kept; the keys rke wrote with mode 0640 are set to 0600.
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
      - The files written, by path; never key material.
options:
  distribution:
    description: The distribution whose certificate names and rules to use; RKE1 only.
    type: str
    default: rke1
    choices: [rke1]
  cluster_yml:
    description: The RKE1 C(cluster.yml) the CSRs were generated for.
    type: path
    required: true
  cert_dir:
    description:
      - The directory C(rke cert generate-csr) wrote to.
      - Default rke's own, the cluster file's path without its extension plus C(_certs) (C(./cluster_certs) for
        C(cluster.yml)).
    type: path
  ca_cert:
    description: The operator's CA certificate (PEM; the first certificate of the file is the signer).
    type: path
    required: true
  ca_key:
    description: The private key of O(ca_cert) (PEM, not encrypted). Only read.
    type: path
    required: true
  validity_days:
    description: Validity of the signed certificates in days, never past the CA's own C(notAfter).
    type: int
    default: 365
requirements:
  - PyYAML (part of ansible-core's requirements on the controller).
seealso:
  - name: RKE1 custom certificates
    description: rke's documentation of C(rke cert generate-csr) and C(rke up --custom-certs).
    link: https://rke.docs.rancher.com/installation/certs
  - module: kubepki.certs.external_ca
  - module: kubepki.certs.cert_check
"""

EXAMPLES = r"""
- name: Sign the CSRs of `rke cert generate-csr` with the operator's CA
  kubepki.certs.rke1_external_ca:
    cluster_yml: /srv/rke/cluster.yml
    ca_cert: /srv/pki/rke-ca.pem
    ca_key: /srv/pki/rke-ca-key.pem
    validity_days: 730
  delegate_to: localhost

- name: A certificate directory of its own
  kubepki.certs.rke1_external_ca:
    cluster_yml: /srv/rke/cluster.yml
    cert_dir: /srv/rke/custom-certs
    ca_cert: /srv/pki/rke-ca.pem
    ca_key: /srv/pki/rke-ca-key.pem
"""

RETURN = r"""
cert_dir:
  description: The certificate directory (O(cert_dir) or rke's default).
  returned: always
  type: str
  sample: /srv/rke/cluster_certs
expected:
  description: The names C(rke cert generate-csr) writes a CSR and key for with this C(cluster.yml).
  returned: always
  type: list
  elements: str
  sample: [kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kube-node, kube-admin,
           kube-apiserver-proxy-client, kube-etcd-10-0-0-1]
extra:
  description: CSRs in O(cert_dir) for no name of this C(cluster.yml) (a removed node's, another cluster's); signed too,
    as C(rke up --custom-certs) reads every certificate there.
  returned: always
  type: list
  elements: str
  sample: []
items:
  description:
    - Per name, its files and state - C(signed) (a new certificate), C(present) (kept), C(created) (the
      service-account token key and its certificate made), C(written) (a CA certificate file written).
    - C(server_auth) tells whether the certificate has the server auth usage besides client auth.
  returned: always
  type: list
  elements: dict
  sample: [{"name": kube-apiserver, "csr": /srv/rke/cluster_certs/kube-apiserver-csr.pem,
            "cert": /srv/rke/cluster_certs/kube-apiserver.pem, "key": /srv/rke/cluster_certs/kube-apiserver-key.pem,
            "server_auth": true, "state": signed}]
written:
  description: The files written (in check mode, those that would be).
  returned: always
  type: list
  elements: str
ca_fingerprint_sha256:
  description: SHA-256 fingerprint of the CA certificate that signed (colon-separated hex).
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import pending_writes_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import RKE1_CUSTOM_CERTS_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import require_cryptography, run_engine
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_csr import (
    apply_plan,
    check_completeness,
    default_cert_dir,
    plan_report,
    plan_signing,
    read_cluster_config,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            distribution=dict(type="str", default=RKE1_CUSTOM_CERTS_DISTRIBUTIONS[0],
                              choices=list(RKE1_CUSTOM_CERTS_DISTRIBUTIONS)),
            cluster_yml=dict(type="path", required=True),
            cert_dir=dict(type="path"),
            ca_cert=dict(type="path", required=True),
            ca_key=dict(type="path", required=True, no_log=False),  # a path; the key itself is never returned
            validity_days=dict(type="int", default=365),
        ),
        supports_check_mode=True,
    )
    require_cryptography(module)
    params = module.params
    layout = run_engine(module, get_layout, params["distribution"])
    cluster_yml = os.path.abspath(params["cluster_yml"])
    cert_dir = os.path.abspath(params["cert_dir"] or default_cert_dir(cluster_yml, layout))
    config = run_engine(module, read_cluster_config, cluster_yml)
    plan = run_engine(module, plan_signing, config, cert_dir, layout, ca_cert_path=params["ca_cert"],
                      ca_key_path=params["ca_key"], validity_days=params["validity_days"])
    result = plan_report(plan, check_completeness(config, cert_dir, layout))
    if module._diff and plan.changed:
        result["diff"] = pending_writes_diff(cert_dir, result["written"])
    if plan.changed and not module.check_mode:
        run_engine(module, apply_plan, plan)
    module.exit_json(changed=plan.changed, **result)


if __name__ == "__main__":
    main()
