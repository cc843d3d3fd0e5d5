# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""RKE1 certificates from an operator-held CA: the directory of ``rke cert generate-csr`` signed for
``rke up --custom-certs``.

``rke cert generate-csr --config cluster.yml [--cert-dir DIR]`` writes ``<name>-csr.pem`` + ``<name>-key.pem`` for
every component, every etcd host and (with ``services.kubelet.generate_serving_certificate``) every host into DIR
(default ``<cluster file without extension>_certs`` next to it). :func:`expected_names` says which names that must be,
from cluster.yml and rke's rules (layout table); :func:`plan_signing` refuses a directory that lacks any of them, then
signs every CSR there with the operator's CA on the controller (the CSR's subject and names as they are, ClientAuth
always and ServerAuth where rke asks for it), and adds what ``rke up --custom-certs`` reads besides: ``kube-ca.pem``
and ``kube-apiserver-requestheader-ca.pem`` (the CA certificate, no key; rke's docs use the cluster CA for both) and
the service-account token key ``kube-service-account-token-key.pem`` (RSA 2048, made when absent) with its
certificate. A certificate already there that is for the CSR's key, subject and names, issued by this CA and valid
now is kept, so a rerun changes nothing. Keys are written 0600, certificates 0644, every file atomically.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
    certificate_alt_names,
    build_leaf_certificate,
    can_sign_certificates,
    dump_certificates,
    fingerprint_sha256,
    is_directly_issued_by,
    load_certificates,
    not_after,
    not_before,
    request_alt_names,
    sign_request,
    utcnow,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.deps import x509
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    atomic_write,
    ensure_dir,
    holds,
    read_bytes,
    read_if_exists,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import (
    generate_private_key,
    key_matches_certificate,
    load_private_key,
    same_key,
    serialize_private_key,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_check import host_suffix
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_state import StateNode

try:
    import yaml
except ImportError:  # PyYAML comes with ansible-core on the controller, where this runs; reported when absent
    yaml = None

SERVICE_ACCOUNT_KEY_TYPE = "rsa-2048"  # rke's docs make the service-account token key with an RSA 2048 key
_GENERATE_HINT = "run `rke cert generate-csr --config %s --cert-dir %s` (it keeps the pairs already there)"


@dataclass(frozen=True)
class ClusterConfig:
    """What cluster.yml says about the certificate set: its nodes and whether kubelets get serving certificates."""

    path: str
    nodes: tuple  # of StateNode
    kubelet_serving: bool


@dataclass
class SigningPlan:
    """What :func:`apply_plan` writes (``writes``: (path, bytes, mode)); ``items`` is the public per-name report."""

    cert_dir: str
    items: list
    writes: list = field(default_factory=list, repr=False)
    ca_fingerprint: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.writes)


def _names(layout) -> dict:
    return layout.extra["custom_certs"]


def default_cert_dir(cluster_yml: str, layout) -> str:
    """rke's default ``--cert-dir`` (cluster.GetCertificateDirPath): the cluster file's path without its extension,
    plus ``_certs``."""
    return os.path.splitext(cluster_yml)[0] + _names(layout)["dir_suffix"]


def _node(raw, index: int, source: str) -> StateNode:
    if not isinstance(raw, dict) or not isinstance(raw.get("address"), str) or not raw["address"]:
        raise InvalidInputError("%s: nodes[%d] has no address (rke needs one per node)" % (source, index), path=source)
    roles = raw.get("role") if isinstance(raw.get("role"), list) else []
    return StateNode(address=raw["address"], internal_address=str(raw.get("internal_address") or ""),
                     hostname_override=str(raw.get("hostname_override") or ""),
                     roles=tuple(str(role) for role in roles))


def parse_cluster_config(document, *, source: str) -> ClusterConfig:
    """cluster.yml as parsed YAML; raises InvalidInputError naming what rke would refuse too (no nodes)."""
    if not isinstance(document, dict):
        raise InvalidInputError("%s is not a cluster.yml (a YAML mapping with nodes)" % source, path=source)
    raw_nodes = document.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise InvalidInputError("%s: Cluster must have at least one node (rke's own check)" % source, path=source)
    services = document.get("services") if isinstance(document.get("services"), dict) else {}
    kubelet = services.get("kubelet") if isinstance(services.get("kubelet"), dict) else {}
    return ClusterConfig(path=source, nodes=tuple(_node(raw, i, source) for i, raw in enumerate(raw_nodes)),
                         kubelet_serving=bool(kubelet.get("generate_serving_certificate")))


def read_cluster_config(path: str) -> ClusterConfig:
    """Read and parse the cluster.yml at ``path``."""
    if yaml is None:
        raise InvalidInputError("PyYAML is needed to read %s (python3-yaml)" % path, path=path)
    data = read_bytes(path, what="cluster file")
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise InvalidInputError("%s is not valid YAML: %s" % (path, exc), path=path) from None
    return parse_cluster_config(document, source=path)


def expected_names(config: ClusterConfig, layout) -> list:
    """The names ``rke cert generate-csr`` writes a CSR and key for, in its order (pki.GenerateRKEServicesCSRs)."""
    names = layout.extra["certificate_names"]
    wanted = list(_names(layout)["csr_components"])
    wanted += ["%s-%s" % (names["etcd_prefix"], host_suffix(node)) for node in config.nodes if "etcd" in node.roles]
    if config.kubelet_serving:
        wanted += ["%s-%s" % (names["kubelet_prefix"], host_suffix(node)) for node in config.nodes]
    return list(dict.fromkeys(wanted))


def missing_files(cert_dir: str, names: list, layout) -> list:
    """The ``<name>-csr.pem`` / ``<name>-key.pem`` files of ``names`` absent from ``cert_dir``."""
    suffixes = (_names(layout)["csr_suffix"], _names(layout)["key_suffix"])
    return [name + suffix for name in names for suffix in suffixes
            if not os.path.isfile(os.path.join(cert_dir, name + suffix))]


def csr_names(cert_dir: str, layout) -> list:
    """Every ``<name>`` with a ``<name>-csr.pem`` in ``cert_dir`` (what rke's pki.ReadCSRsAndKeysFromDir reads)."""
    suffix = _names(layout)["csr_suffix"]
    if not os.path.isdir(cert_dir):
        return []
    return sorted(entry[:-len(suffix)] for entry in os.listdir(cert_dir) if entry.endswith(suffix))


def is_server_name(name: str, layout) -> bool:
    """Whether rke asks ServerAuth (besides ClientAuth) for ``name``: the API server, the proxy client, etcd, kubelet."""
    names = layout.extra["certificate_names"]
    prefixes = tuple(names[key] + "-" for key in ("etcd_prefix", "kubelet_prefix"))
    return name in _names(layout)["server_auth"] or name.startswith(prefixes)


def _load_ca(ca_cert_path: str, ca_key_path: str, now: datetime.datetime):
    ca_certificate = load_certificates(read_bytes(ca_cert_path, what="CA certificate"), source=ca_cert_path)[0]
    ca_key = load_private_key(read_bytes(ca_key_path, what="CA key"), source=ca_key_path)
    if not key_matches_certificate(ca_key, ca_certificate):
        raise InvalidInputError("%s is not the key of %s" % (ca_key_path, ca_cert_path), path=ca_key_path)
    if not can_sign_certificates(ca_certificate):
        raise InvalidInputError("%s is not a CA certificate (basicConstraints CA:TRUE and keyCertSign needed)"
                                % ca_cert_path, path=ca_cert_path)
    if not not_before(ca_certificate) <= now < not_after(ca_certificate):
        raise InvalidInputError("%s is not valid now (not after %s): sign with a valid CA"
                                % (ca_cert_path, not_after(ca_certificate).isoformat()), path=ca_cert_path)
    return ca_certificate, ca_key


def _names_of(obj, alt_names) -> tuple:
    dns_names, ip_addresses = alt_names(obj)
    return obj.subject, sorted(dns_names), sorted(ip_addresses)


def _keep(cert_path: str, public_of, ca_certificate, now: datetime.datetime, request=None) -> bool:
    """Whether the certificate at ``cert_path`` can stay: for that key (and the request's subject and names),
    issued by this CA, valid now."""
    data = read_if_exists(cert_path)
    if data is None:
        return False
    try:
        existing = load_certificates(data, source=cert_path)[0]
    except InvalidInputError:
        return False
    if request is not None and _names_of(existing, certificate_alt_names) != _names_of(request, request_alt_names):
        return False
    return (same_key(existing, public_of) and is_directly_issued_by(existing, ca_certificate)
            and not_before(existing) <= now < not_after(existing))


def _pending(path: str, data: bytes, mode: int) -> list:
    """``[(path, data, mode)]`` unless ``path`` holds ``data`` with ``mode`` already."""
    if holds(path, data, mode):
        return []
    return [(path, data, mode)]


def _service_account(cert_dir: str, layout, ca_certificate, ca_key, validity_days: int,
                     now: datetime.datetime) -> tuple:
    """(item, writes) for the service-account token key (made when absent) and its certificate by this CA."""
    name = _names(layout)["service_account"]
    key_path = os.path.join(cert_dir, name + _names(layout)["key_suffix"])
    cert_path = os.path.join(cert_dir, name + _names(layout)["cert_suffix"])
    key_data = read_if_exists(key_path)
    if key_data is None:
        key = generate_private_key(SERVICE_ACCOUNT_KEY_TYPE)
        writes = [(key_path, serialize_private_key(key), PRIVATE_FILE_MODE)]
    else:
        key = load_private_key(key_data, source=key_path)
        writes = _pending(key_path, key_data, PRIVATE_FILE_MODE)
    state = "created" if key_data is None else "present"
    if key_data is None or not _keep(cert_path, key, ca_certificate, now):
        certificate = build_leaf_certificate(subject_common_name=name, subject_public_key=key.public_key(),
                                             issuer_certificate=ca_certificate, issuer_key=ca_key,
                                             validity_days=validity_days, now=now)
        writes.append((cert_path, dump_certificates([certificate]), PUBLIC_FILE_MODE))
        state = "created" if key_data is None else "signed"
    return {"name": name, "cert": cert_path, "key": key_path, "state": state}, writes


def _sign_one(cert_dir: str, name: str, layout, ca_certificate, ca_key, validity_days: int,
              now: datetime.datetime) -> tuple:
    """(item, writes) of one ``<name>-csr.pem``: its key must match it; its certificate is kept or signed."""
    spec = _names(layout)
    csr_path, key_path = (os.path.join(cert_dir, name + spec[suffix]) for suffix in ("csr_suffix", "key_suffix"))
    cert_path = os.path.join(cert_dir, name + spec["cert_suffix"])
    try:
        request = x509.load_pem_x509_csr(read_bytes(csr_path, what="CSR"))
    except ValueError as exc:
        raise InvalidInputError("%s is not a PEM certificate request: %s" % (csr_path, exc), path=csr_path) from None
    key = load_private_key(read_bytes(key_path, what="private key of %s" % csr_path), source=key_path)
    if not same_key(key, request.public_key()):
        raise InvalidInputError("%s is not the key of %s: run `rke cert generate-csr` again for %s (remove both "
                                "files first)" % (key_path, csr_path, name), path=key_path)
    item = {"name": name, "csr": csr_path, "cert": cert_path, "key": key_path,
            "server_auth": is_server_name(name, layout)}
    # rke writes its keys 0640; rewritten (same bytes) 0600, as every private key here.
    writes = _pending(key_path, read_bytes(key_path), PRIVATE_FILE_MODE)
    if _keep(cert_path, request.public_key(), ca_certificate, now, request=request):
        return dict(item, state="present"), writes
    certificate = sign_request(request, issuer_certificate=ca_certificate, issuer_key=ca_key,
                               validity_days=validity_days, now=now, source=csr_path,
                               server_auth=item["server_auth"], client_auth=True)
    return dict(item, state="signed"), writes + [(cert_path, dump_certificates([certificate]), PUBLIC_FILE_MODE)]


def check_completeness(config: ClusterConfig, cert_dir: str, layout) -> dict:
    """``{expected, missing, extra}``: the names generate-csr writes for ``config``, the files of them absent from
    ``cert_dir``, and CSRs there for no name of ``config`` (another cluster.yml's, or a removed node's)."""
    expected = expected_names(config, layout)
    present = csr_names(cert_dir, layout)
    return {"expected": expected, "missing": missing_files(cert_dir, expected, layout),
            "extra": [name for name in present if name not in expected]}


def plan_signing(config: ClusterConfig, cert_dir: str, layout, *, ca_cert_path: str, ca_key_path: str,
                 validity_days: int, now: datetime.datetime | None = None) -> SigningPlan:
    """The complete signing of ``cert_dir`` for ``config``; refuses (InvalidInputError) before planning any write
    when a CSR or key is missing, naming each, or when a CSR and its key disagree."""
    now = (now or utcnow()).replace(microsecond=0)
    if validity_days < 1:
        raise InvalidInputError("validity_days must be at least 1, got %d" % validity_days)
    completeness = check_completeness(config, cert_dir, layout)
    if completeness["missing"]:
        raise InvalidInputError("%s lacks %s: %s" % (cert_dir, ", ".join(completeness["missing"]),
                                                     _GENERATE_HINT % (config.path, cert_dir)), path=cert_dir)
    ca_certificate, ca_key = _load_ca(ca_cert_path, ca_key_path, now)
    items, writes = [], []
    for name in completeness["expected"] + completeness["extra"]:
        item, pending = _sign_one(cert_dir, name, layout, ca_certificate, ca_key, validity_days, now)
        items.append(item)
        writes += pending
    item, pending = _service_account(cert_dir, layout, ca_certificate, ca_key, validity_days, now)
    items.append(item)
    writes += pending
    ca_pem = dump_certificates([ca_certificate])
    for name in _names(layout)["ca_names"]:
        path = os.path.join(cert_dir, name + _names(layout)["cert_suffix"])
        pending = _pending(path, ca_pem, PUBLIC_FILE_MODE)
        items.append({"name": name, "cert": path, "state": "written" if pending else "present"})
        writes += pending
    return SigningPlan(cert_dir=cert_dir, items=items, writes=writes, ca_fingerprint=fingerprint_sha256(ca_certificate))


def apply_plan(plan: SigningPlan) -> list:
    """Write the plan's files atomically (keys 0600, the directory 0700 when created); returns the paths."""
    ensure_dir(plan.cert_dir)
    for path, data, mode in plan.writes:
        atomic_write(path, data, mode=mode)
    return [write[0] for write in plan.writes]


def plan_report(plan: SigningPlan, completeness: dict) -> dict:
    """The module's result: public fields only (paths, names, states), never key material."""
    return {"cert_dir": plan.cert_dir, "items": plan.items, "written": [write[0] for write in plan.writes],
            "expected": completeness["expected"], "extra": completeness["extra"],
            "ca_fingerprint_sha256": plan.ca_fingerprint}
