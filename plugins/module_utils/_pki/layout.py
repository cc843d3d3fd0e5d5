# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""THE distribution layout table: every path, file name, unit name and port the collection knows.

Modules and roles read it (roles through the ``layout`` module); nothing else hard-codes a path.
Paths in ``CAFile``/``LeafFile`` are relative to the distribution's tls/pki directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import LayoutError

DISTRIBUTIONS = ("k3s", "rke2", "kubeadm", "rke1")
RANCHER_DISTRIBUTIONS = ("k3s", "rke2")
# The distributions each operation supports. Modules take their ``distribution`` choices from here (their
# DOCUMENTATION lists the same, checked by tests/unit/plugins/modules/test_module_contracts.py).
CA_SET_DISTRIBUTIONS = ("k3s", "rke2", "kubeadm")        # ca_chain: the CA file layouts the engine writes
SERVICE_KEY_DISTRIBUTIONS = ("k3s", "rke2", "kubeadm")   # service_account_key: service.key, or sa.key + sa.pub
ROTATE_CA_DISTRIBUTIONS = RANCHER_DISTRIBUTIONS          # `<program> certificate rotate-ca`: ca_rotation, ca_verify
JOIN_TOKEN_DISTRIBUTIONS = RANCHER_DISTRIBUTIONS         # K10 secure tokens carrying a CA hash: join_token
HEALTH_GATE_DISTRIBUTIONS = ("k3s", "rke2", "kubeadm")   # an admin kubectl on every server: health_gate
KUBEADM_DISTRIBUTIONS = ("kubeadm",)                     # kubeadm's own names: cert_check kubeadm_output, leaf_renew
RKE1_STATE_DISTRIBUTIONS = ("rke1",)                     # cluster.rkestate: cert_check rkestate, rkestate_expected
RKE1_CUSTOM_CERTS_DISTRIBUTIONS = ("rke1",)              # `rke cert generate-csr` / `rke up --custom-certs`: rke1_external_ca


@dataclass(frozen=True)
class CAFile:
    """One cluster CA: its role name, cert and key file (relative to the tls dir), CN stem."""

    name: str
    cert: str
    key: str
    cn_stem: str


@dataclass(frozen=True)
class LeafFile:
    """A leaf certificate the distribution issues, with the CA (by ``CAFile.name``) that signs it, and the name the
    distribution's own tools give it (kubeadm's certificate names; None where a tool has none)."""

    cert: str
    key: str
    ca: str
    name: str | None = None


@dataclass(frozen=True)
class Layout:
    distribution: str
    program: str
    data_dir: str
    tls_dir: str
    config_dir: str
    cas: tuple
    service_key: str
    service_pub: str | None
    root_ca: tuple | None                 # (pem, key, crt) file names of a custom root, k3s/RKE2 only
    intermediate_ca: tuple | None         # (pem, key, crt)
    leaves: tuple
    agent_dir: str | None
    agent_ca_files: tuple
    kubeconfigs: tuple                    # absolute paths of kubeconfig files (embedded or by reference)
    cert_scan_dirs: tuple                 # absolute directories cert_check walks
    cert_patterns: tuple                  # file name suffixes that hold certificates
    key_suffix_rules: tuple               # (cert suffix, key suffix) pairs to find a cert's key
    server_unit: str
    agent_unit: str | None
    supervisor_port: int
    token_file: str | None
    agent_token_file: str | None
    config_files: tuple                   # config.yaml and the drop-in directory glob
    env_files: tuple                      # env files that can carry <PROGRAM>_TOKEN
    unit_files: tuple                     # unit files whose ExecStart may carry --token
    token_env_vars: tuple
    force_restart_file: str | None
    kubectl: tuple = ()                   # argv prefix of the node's admin kubectl (servers)
    extra: dict = field(default_factory=dict)
    api_ca: str | None = None             # CAFile.name of the CA that issues the API server's serving cert

    def api_ca_file(self) -> str:
        """The cert file (bundle on k3s/RKE2, as ``/cacerts`` serves it) a client trusts the API server by."""
        if self.api_ca is None:
            raise LayoutError("%s has no API server CA in the layout table" % self.distribution)
        return self.tls_path(self.ca(self.api_ca).cert)

    def ca(self, name: str) -> CAFile:
        for entry in self.cas:
            if entry.name == name:
                return entry
        raise LayoutError("%s has no CA named %r; known: %s"
                          % (self.distribution, name, ", ".join(c.name for c in self.cas)))

    def tls_path(self, relative: str) -> str:
        return os.path.join(self.tls_dir, relative)

    def ca_paths(self, name: str) -> tuple:
        """(certificate path, key path) of the CA ``name`` on this node."""
        entry = self.ca(name)
        return self.tls_path(entry.cert), self.tls_path(entry.key)

    def as_dict(self) -> dict:
        """Plain data for roles (returned by the ``layout`` facts and by modules)."""
        return {
            "distribution": self.distribution,
            "program": self.program,
            "data_dir": self.data_dir,
            "tls_dir": self.tls_dir,
            "config_dir": self.config_dir,
            "cas": [{"name": c.name, "cert": c.cert, "key": c.key} for c in self.cas],
            "service_key": self.service_key,
            "service_pub": self.service_pub,
            "leaves": [{"cert": leaf.cert, "key": leaf.key, "ca": leaf.ca} for leaf in self.leaves],
            "agent_dir": self.agent_dir,
            "kubeconfigs": list(self.kubeconfigs),
            "cert_scan_dirs": list(self.cert_scan_dirs),
            "server_unit": self.server_unit,
            "agent_unit": self.agent_unit,
            "supervisor_port": self.supervisor_port,
            "token_file": self.token_file,
            "agent_token_file": self.agent_token_file,
            "config_files": list(self.config_files),
            "env_files": list(self.env_files),
            "unit_files": list(self.unit_files),
            "token_env_vars": list(self.token_env_vars),
            "force_restart_file": self.force_restart_file,
            "kubectl": list(self.kubectl),
            "api_ca": self.api_ca,
        }


def _rancher_cas(program: str) -> tuple:
    return (
        CAFile("server-ca", "server-ca.crt", "server-ca.key", "server-ca"),
        CAFile("client-ca", "client-ca.crt", "client-ca.key", "client-ca"),
        CAFile("request-header-ca", "request-header-ca.crt", "request-header-ca.key", "request-header-ca"),
        CAFile("etcd-server-ca", "etcd/server-ca.crt", "etcd/server-ca.key", "etcd-server-ca"),
        CAFile("etcd-peer-ca", "etcd/peer-ca.crt", "etcd/peer-ca.key", "etcd-peer-ca"),
    )


def _rancher_leaves(program: str) -> tuple:
    client = ("client-admin", "client-supervisor", "client-controller", "client-scheduler",
              "client-kube-apiserver", "client-kube-proxy", "client-%s-controller" % program,
              "client-%s-cloud-controller" % program)
    leaves = [LeafFile(name + ".crt", name + ".key", "client-ca") for name in client]
    leaves += [
        LeafFile("serving-kube-apiserver.crt", "serving-kube-apiserver.key", "server-ca"),
        LeafFile("client-auth-proxy.crt", "client-auth-proxy.key", "request-header-ca"),
        LeafFile("etcd/client.crt", "etcd/client.key", "etcd-server-ca"),
        LeafFile("etcd/server-client.crt", "etcd/server-client.key", "etcd-server-ca"),
        LeafFile("etcd/peer-server-client.crt", "etcd/peer-server-client.key", "etcd-peer-ca"),
    ]
    return tuple(leaves)


def _rancher_layout(program: str, data_dir: str | None) -> Layout:
    data_dir = data_dir or "/var/lib/rancher/%s" % program
    config_dir = "/etc/rancher/%s" % program
    tls_dir = os.path.join(data_dir, "server", "tls")
    agent_dir = os.path.join(data_dir, "agent")
    upper = program.upper()
    if program == "k3s":
        server_unit, agent_unit, port = "k3s", "k3s-agent", 6443
        env_files = ("/etc/systemd/system/k3s.service.env", "/etc/systemd/system/k3s-agent.service.env",
                     "/etc/default/k3s", "/etc/default/k3s-agent", "/etc/sysconfig/k3s",
                     "/etc/sysconfig/k3s-agent", "/etc/rancher/k3s/k3s.env", "/etc/rancher/k3s/k3s-agent.env")
        unit_files = ("/etc/systemd/system/k3s.service", "/etc/systemd/system/k3s-agent.service")
        force_restart = None
        kubectl = ("k3s", "kubectl")
    else:
        server_unit, agent_unit, port = "rke2-server", "rke2-agent", 9345
        env_files = ("/etc/default/rke2-server", "/etc/default/rke2-agent", "/etc/sysconfig/rke2-server",
                     "/etc/sysconfig/rke2-agent", "/usr/local/lib/systemd/system/rke2-server.env",
                     "/usr/local/lib/systemd/system/rke2-agent.env")
        unit_files = ("/etc/systemd/system/rke2-server.service", "/etc/systemd/system/rke2-agent.service",
                      "/usr/local/lib/systemd/system/rke2-server.service",
                      "/usr/local/lib/systemd/system/rke2-agent.service")
        force_restart = os.path.join(data_dir, "force-restart")
        # RKE2 has no kubectl subcommand: it stages kubectl into <data-dir>/bin at start.
        kubectl = (os.path.join(data_dir, "bin", "kubectl"), "--kubeconfig", os.path.join(config_dir, "rke2.yaml"))
    return Layout(
        distribution=program,
        program=program,
        data_dir=data_dir,
        tls_dir=tls_dir,
        config_dir=config_dir,
        cas=_rancher_cas(program),
        service_key="service.key",
        service_pub=None,
        root_ca=("root-ca.pem", "root-ca.key", "root-ca.crt"),
        intermediate_ca=("intermediate-ca.pem", "intermediate-ca.key", "intermediate-ca.crt"),
        leaves=_rancher_leaves(program),
        agent_dir=agent_dir,
        agent_ca_files=("client-ca.crt", "server-ca.crt"),
        kubeconfigs=(os.path.join(config_dir, "%s.yaml" % program),
                     os.path.join(data_dir, "server", "cred", "admin.kubeconfig"),
                     os.path.join(agent_dir, "kubelet.kubeconfig")),
        cert_scan_dirs=(tls_dir, os.path.join(tls_dir, "etcd"), agent_dir),
        cert_patterns=(".crt", ".pem"),
        key_suffix_rules=((".crt", ".key"), (".pem", ".key")),
        server_unit=server_unit,
        agent_unit=agent_unit,
        supervisor_port=port,
        token_file=os.path.join(data_dir, "server", "token"),
        agent_token_file=os.path.join(data_dir, "server", "agent-token"),
        config_files=(os.path.join(config_dir, "config.yaml"), os.path.join(config_dir, "config.yaml.d", "*.yaml")),
        env_files=env_files,
        unit_files=unit_files,
        token_env_vars=("%s_TOKEN" % upper, "%s_AGENT_TOKEN" % upper),
        force_restart_file=force_restart,
        kubectl=kubectl,
        extra={"cn_prefix": program, "cacerts_path": "/cacerts"},
        api_ca="server-ca",
    )


def _kubeadm_layout(data_dir: str | None) -> Layout:
    base = data_dir or "/etc/kubernetes"
    pki = os.path.join(base, "pki")
    cas = (
        CAFile("ca", "ca.crt", "ca.key", "kubernetes"),
        CAFile("front-proxy-ca", "front-proxy-ca.crt", "front-proxy-ca.key", "front-proxy-ca"),
        CAFile("etcd-ca", "etcd/ca.crt", "etcd/ca.key", "etcd-ca"),
    )
    leaves = (
        LeafFile("apiserver.crt", "apiserver.key", "ca", "apiserver"),
        LeafFile("apiserver-kubelet-client.crt", "apiserver-kubelet-client.key", "ca", "apiserver-kubelet-client"),
        LeafFile("front-proxy-client.crt", "front-proxy-client.key", "front-proxy-ca", "front-proxy-client"),
        LeafFile("etcd/server.crt", "etcd/server.key", "etcd-ca", "etcd-server"),
        LeafFile("etcd/peer.crt", "etcd/peer.key", "etcd-ca", "etcd-peer"),
        LeafFile("etcd/healthcheck-client.crt", "etcd/healthcheck-client.key", "etcd-ca", "etcd-healthcheck-client"),
        LeafFile("apiserver-etcd-client.crt", "apiserver-etcd-client.key", "etcd-ca", "apiserver-etcd-client"),
    )
    return Layout(
        distribution="kubeadm", program="kubeadm", data_dir=base, tls_dir=pki, config_dir=base, cas=cas,
        service_key="sa.key", service_pub="sa.pub", root_ca=None, intermediate_ca=None, leaves=leaves,
        agent_dir=None, agent_ca_files=(),
        kubeconfigs=tuple(os.path.join(base, name) for name in
                          ("admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf",
                           "kubelet.conf")),
        cert_scan_dirs=(pki, os.path.join(pki, "etcd")),
        cert_patterns=(".crt",),
        key_suffix_rules=((".crt", ".key"),),
        server_unit="kubelet", agent_unit="kubelet", supervisor_port=6443,
        token_file=None, agent_token_file=None, config_files=(), env_files=(), unit_files=(),
        token_env_vars=(), force_restart_file=None,
        kubectl=("kubectl", "--kubeconfig", os.path.join(base, "admin.conf")),
        api_ca="ca",
        # The kubeconfigs whose client certificate kubeadm renews and reports (kubelet.conf is the kubelet's own),
        # signed by "ca"; the etcd static pod manifest, whose presence means a local (stacked) etcd; the static pods
        # that read each renewable certificate at start (the etcd health-check client is read by its probe only);
        # the extended key usages kubeadm gives each certificate (what a signer of kubeadm's CSRs must give).
        extra={"renewable_kubeconfigs": ("admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf"),
               "admin_kubeconfig": "admin.conf",  # the one operators copy to ~/.kube/config
               "manifests_dir": os.path.join(base, "manifests"),
               # flags kubeadm leaves out of a static pod in External CA mode: they name the CA key (pod: (CA, flags))
               "external_ca_dropped_flags": {
                   "kube-controller-manager": ("ca", ("--cluster-signing-cert-file", "--cluster-signing-key-file"))},
               # flags that cannot take a bundle (kubeadm#1350): during a CA rotation they name a separate file holding
               # the new CA alone, pki/<ca>-next.crt/.key (pod: (CA, {flag: "cert" or "key"}))
               "ca_rotation_single_file_flags": {
                   "kube-controller-manager": ("ca", {"--client-ca-file": "cert", "--cluster-signing-cert-file": "cert",
                                                      "--cluster-signing-key-file": "key"})},
               # the kubelet's kubeconfig (its client certificate is embedded, or a file such as kubelet-client-current.pem)
               "kubelet_kubeconfig": "kubelet.conf",
               # the control-plane static pods, in the order a restart goes (etcd under the apiserver first)
               "static_pods": ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"),
               "etcd_manifest": os.path.join(base, "manifests", "etcd.yaml"),  # = <manifests_dir>/etcd.yaml
               "restarts": {"apiserver": ("kube-apiserver",), "apiserver-kubelet-client": ("kube-apiserver",),
                            "apiserver-etcd-client": ("kube-apiserver",), "front-proxy-client": ("kube-apiserver",),
                            "etcd-server": ("etcd",), "etcd-peer": ("etcd",),
                            "controller-manager.conf": ("kube-controller-manager",),
                            "scheduler.conf": ("kube-scheduler",)},
               # kubeadm's extended key usages per certificate; every other one is a client certificate
               "usages": {"apiserver": ("server_auth",), "etcd-server": ("server_auth", "client_auth"),
                          "etcd-peer": ("server_auth", "client_auth")}},
    )


def _rke1_layout(data_dir: str | None) -> Layout:
    base = data_dir or "/etc/kubernetes"
    ssl = os.path.join(base, "ssl")
    cas = (
        CAFile("kube-ca", "kube-ca.pem", "kube-ca-key.pem", "kube-ca"),
        CAFile("requestheader-ca", "kube-apiserver-requestheader-ca.pem",
               "kube-apiserver-requestheader-ca-key.pem", "kube-apiserver-requestheader-ca"),
    )
    return Layout(
        distribution="rke1", program="rke", data_dir=base, tls_dir=ssl, config_dir=base, cas=cas,
        service_key="kube-service-account-token-key.pem", service_pub=None, root_ca=None,
        intermediate_ca=None, leaves=(), agent_dir=None, agent_ca_files=(),
        kubeconfigs=(), cert_scan_dirs=(ssl,), cert_patterns=(".pem",),
        key_suffix_rules=((".pem", "-key.pem"),),
        server_unit="kubelet", agent_unit="kubelet", supervisor_port=6443,
        token_file=None, agent_token_file=None, config_files=(), env_files=(), unit_files=(),
        token_env_vars=(), force_restart_file=None, kubectl=("kubectl",),
        api_ca="kube-ca",
        # rke's certificate names (rke pki/constants.go) and which of them it deploys to a node (pki/util.go
        # getCertKeys): every node gets "all_nodes" (the CA key only on control-plane nodes), control-plane nodes
        # "controlplane" (the etcd client pair only with an external etcd), etcd nodes <etcd_prefix>-<host> of every
        # etcd host, and with services.kubelet.generate_serving_certificate every node <kubelet_prefix>-<host> of
        # every host; <host> is the internal address (else the address), "." -> "-", lower case. A name's files
        # are <name>.pem, <name>-key.pem and kubecfg-<name>.yaml in tls_dir; kube-admin stays on the workstation.
        extra={"skip_suffixes": ("-key.pem", "-csr.pem"),
               "certificate_names": {"all_nodes": ("kube-ca", "kube-proxy", "kube-node"),
                                     "controlplane": ("kube-apiserver", "kube-service-account-token",
                                                      "kube-controller-manager", "kube-scheduler", "kube-etcd-client",
                                                      "kube-etcd-client-ca", "kube-apiserver-requestheader-ca",
                                                      "kube-apiserver-proxy-client"),
                                     "etcd_prefix": "kube-etcd",
                                     "kubelet_prefix": "kube-kubelet"},
               # `rke cert generate-csr` (pki.GenerateRKEServicesCSRs): a CSR and key per component below, per etcd
               # host <etcd_prefix>-<host> and, with generate_serving_certificate, per host <kubelet_prefix>-<host>;
               # "server_auth" are the ones rke asks ServerAuth for besides ClientAuth (GenerateCertSigningRequestAndKey
               # with serverCrt, the per-host etcd and kubelet ones too). `rke up --custom-certs` reads <name>.pem +
               # <name>-key.pem from the directory (pki.ReadCertsAndKeysFromDir), the CAs' certificates without a key,
               # and the service-account token key as kube-service-account-token-key.pem with its certificate.
               "custom_certs": {"csr_components": ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                                   "kube-proxy", "kube-node", "kube-admin",
                                                   "kube-apiserver-proxy-client"),
                                "server_auth": ("kube-apiserver", "kube-apiserver-proxy-client"),
                                "ca_names": ("kube-ca", "kube-apiserver-requestheader-ca"),
                                "service_account": "kube-service-account-token",
                                "csr_suffix": "-csr.pem", "key_suffix": "-key.pem", "cert_suffix": ".pem",
                                "dir_suffix": "_certs"}},
    )


def get_layout(distribution: str, *, data_dir: str | None = None) -> Layout:
    """The layout of ``distribution``; ``data_dir`` overrides its default data/config root."""
    if distribution in RANCHER_DISTRIBUTIONS:
        return _rancher_layout(distribution, data_dir)
    if distribution == "kubeadm":
        return _kubeadm_layout(data_dir)
    if distribution == "rke1":
        return _rke1_layout(data_dir)
    raise LayoutError("unknown distribution %r; supported: %s" % (distribution, ", ".join(DISTRIBUTIONS)))


KUBEADM_CA_NAMES = tuple(ca.name for ca in _kubeadm_layout(None).cas)  # external_ca's ca_name choices
