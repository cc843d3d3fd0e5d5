# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Reading RKE1's cluster state file, ``cluster.rkestate``: the certificates of every component, by name.

The file is the JSON rke writes next to ``cluster.yml`` (``cluster.FullState``): ``desiredState`` (what the next
``rke up`` deploys; ``rke cert rotate`` writes the new certificates there first) and ``currentState`` (what the
last successful ``rke up`` deployed), each holding ``rkeConfig`` and ``certificatesBundle``: name -> CertificatePKI
(``certificatePEM``, ``keyPEM``, ``commonName``, ``path``, ``keyPath``, ``configPath``, ``config``, ...).

Reading raises InvalidInputError for a file that is absent, unreadable, not JSON or not a state file; one bad
bundle entry does not (its PEM text is kept as found, and the examination reports it).
Private keys stay in :class:`StateCertificate`; nothing here logs or returns them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import read_bytes

CURRENT_STATE = "currentState"
DESIRED_STATE = "desiredState"
SECTIONS = (CURRENT_STATE, DESIRED_STATE)

_RESTORE_HINT = ("rke writes it next to cluster.yml (cluster.rkestate for cluster.yml) at `rke up`; point rkestate at "
                 "that file, or restore it from a backup (without it `rke cert rotate` fails with \"can't find old "
                 "certificates\")")
_NOT_WRITTEN_BY_RKE = "the file is not a state file rke wrote: restore cluster.rkestate from a backup"


@dataclass(frozen=True)
class StateCertificate:
    """One entry of a ``certificatesBundle``. ``key_pem`` is secret: never log or return it."""

    name: str
    section: str
    certificate_pem: str
    key_pem: str
    common_name: str
    ou_name: str
    path: str
    key_path: str
    config_path: str
    config: str

    @property
    def label(self) -> str:
        """``<section>/<name>``, how reports name the entry."""
        return "%s/%s" % (self.section, self.name)


@dataclass(frozen=True)
class StateNode:
    """A node of the state's ``rkeConfig.nodes``: what decides which certificates rke deploys to it."""

    address: str
    internal_address: str
    hostname_override: str
    roles: tuple


@dataclass(frozen=True)
class RkeState:
    """A parsed ``cluster.rkestate``. ``bundles[section]`` is name -> StateCertificate (empty when absent)."""

    path: str
    bundles: dict
    nodes: dict                       # section -> tuple of StateNode
    kubelet_serving_certificates: dict  # section -> services.kubelet.generate_serving_certificate

    @property
    def current(self) -> dict:
        return self.bundles[CURRENT_STATE]

    @property
    def desired(self) -> dict:
        return self.bundles[DESIRED_STATE]


def _text(value, *, field_name: str, where: str, source: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError("%s: %s.%s is %s, expected a string; %s"
                                % (source, where, field_name, type(value).__name__, _NOT_WRITTEN_BY_RKE), path=source)
    return value


def _certificate(name: str, section: str, raw, *, source: str) -> StateCertificate:
    where = "%s.certificatesBundle[%s]" % (section, json.dumps(name))
    if not isinstance(raw, dict):
        raise InvalidInputError("%s: %s is %s, expected an object (CertificatePKI); %s"
                                % (source, where, type(raw).__name__, _NOT_WRITTEN_BY_RKE), path=source)
    fields = dict((json_name, _text(raw.get(json_name), field_name=json_name, where=where, source=source))
                  for json_name in ("certificatePEM", "keyPEM", "commonName", "ouName", "path", "keyPath",
                                    "configPath", "config"))
    return StateCertificate(name=name, section=section, certificate_pem=fields["certificatePEM"],
                            key_pem=fields["keyPEM"], common_name=fields["commonName"], ou_name=fields["ouName"],
                            path=fields["path"], key_path=fields["keyPath"], config_path=fields["configPath"],
                            config=fields["config"])


def _bundle(section: str, state, *, source: str) -> dict:
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise InvalidInputError("%s: %s is %s, expected an object; %s"
                                % (source, section, type(state).__name__, _NOT_WRITTEN_BY_RKE), path=source)
    raw = state.get("certificatesBundle")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInputError("%s: %s.certificatesBundle is %s, expected an object (name -> certificate); %s"
                                % (source, section, type(raw).__name__, _NOT_WRITTEN_BY_RKE), path=source)
    return dict((name, _certificate(name, section, entry, source=source)) for name, entry in sorted(raw.items()))


def _nodes(state) -> tuple:
    config = state.get("rkeConfig") if isinstance(state, dict) else None
    raw_nodes = config.get("nodes") if isinstance(config, dict) else None
    nodes = []
    for raw in raw_nodes if isinstance(raw_nodes, list) else ():
        if not isinstance(raw, dict) or not isinstance(raw.get("address"), str):
            continue
        roles = raw.get("role") if isinstance(raw.get("role"), list) else []
        nodes.append(StateNode(address=raw["address"], internal_address=str(raw.get("internalAddress") or ""),
                               hostname_override=str(raw.get("hostnameOverride") or ""),
                               roles=tuple(str(role) for role in roles)))
    return tuple(nodes)


def _kubelet_serving(state) -> bool:
    config = state.get("rkeConfig") if isinstance(state, dict) else None
    services = config.get("services") if isinstance(config, dict) else None
    kubelet = services.get("kubelet") if isinstance(services, dict) else None
    return bool(kubelet.get("generateServingCertificate")) if isinstance(kubelet, dict) else False


def parse_rkestate(data: bytes, *, source: str) -> RkeState:
    """The state file ``data`` read from ``source``; raises InvalidInputError naming what is wrong and what to do."""
    if not data.strip():
        raise InvalidInputError("%s is empty; %s" % (source, _RESTORE_HINT), path=source)
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInputError("%s is not UTF-8 text (%s); it is not a cluster.rkestate: %s"
                                % (source, exc.reason, _RESTORE_HINT), path=source) from None
    except ValueError as exc:
        raise InvalidInputError("%s is not valid JSON (%s); a cluster.rkestate is the JSON rke writes: %s"
                                % (source, exc, _RESTORE_HINT), path=source) from None
    if not isinstance(document, dict) or not (set(document) & set(SECTIONS)):
        raise InvalidInputError("%s has neither currentState nor desiredState: it is not a cluster.rkestate; %s"
                                % (source, _RESTORE_HINT), path=source)
    bundles = dict((section, _bundle(section, document.get(section), source=source)) for section in SECTIONS)
    if not bundles[CURRENT_STATE] and not bundles[DESIRED_STATE]:
        raise InvalidInputError("%s holds no certificatesBundle in currentState or desiredState: rke has not "
                                "generated this cluster's certificates yet (run `rke up`), or this is another file; %s"
                                % (source, _RESTORE_HINT), path=source)
    return RkeState(path=source, bundles=bundles,
                    nodes=dict((section, _nodes(document.get(section))) for section in SECTIONS),
                    kubelet_serving_certificates=dict((section, _kubelet_serving(document.get(section)))
                                                      for section in SECTIONS))


def read_rkestate(path: str) -> RkeState:
    """Read and parse the state file at ``path`` (on the host the module runs on: the rke workstation)."""
    try:
        data = read_bytes(path, what="RKE1 state file")
    except InvalidInputError as exc:
        raise InvalidInputError("%s; %s" % (exc.message, _RESTORE_HINT), path=path) from None
    return parse_rkestate(data, source=path)
