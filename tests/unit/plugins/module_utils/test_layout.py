# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import dataclasses

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import layout as layout_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import LayoutError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import DISTRIBUTIONS, get_layout


def test_rke2_quirks_live_in_the_table():
    rke2 = get_layout("rke2")
    assert rke2.supervisor_port == 9345
    assert rke2.server_unit == "rke2-server" and rke2.agent_unit == "rke2-agent"
    assert rke2.force_restart_file == "/var/lib/rancher/rke2/force-restart"
    assert any(leaf.cert == "client-rke2-controller.crt" for leaf in rke2.leaves)
    k3s = get_layout("k3s", data_dir="/srv/k3s")
    assert k3s.tls_dir == "/srv/k3s/server/tls" and k3s.supervisor_port == 6443
    assert k3s.token_env_vars == ("K3S_TOKEN", "K3S_AGENT_TOKEN")


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_every_leaf_names_a_known_ca(distribution):
    layout = get_layout(distribution)
    names = {ca.name for ca in layout.cas}
    assert all(leaf.ca in names for leaf in layout.leaves)
    assert layout.as_dict()["distribution"] == distribution


def test_unknown_distribution():
    with pytest.raises(LayoutError, match="unknown distribution 'k8s'"):
        get_layout("k8s")


@pytest.mark.parametrize("distribution, data_dir, kubectl", [
    ("k3s", None, ["k3s", "kubectl"]),
    ("k3s", "/srv/k3s", ["k3s", "kubectl"]),
    ("rke2", None, ["/var/lib/rancher/rke2/bin/kubectl", "--kubeconfig", "/etc/rancher/rke2/rke2.yaml"]),
    ("rke2", "/srv/rke2", ["/srv/rke2/bin/kubectl", "--kubeconfig", "/etc/rancher/rke2/rke2.yaml"]),
    ("kubeadm", None, ["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf"]),
    ("kubeadm", "/opt/k8s", ["kubectl", "--kubeconfig", "/opt/k8s/admin.conf"]),
])
def test_kubectl_per_distribution(distribution, data_dir, kubectl):
    layout = get_layout(distribution, data_dir=data_dir)
    assert layout.kubectl == tuple(kubectl)
    assert layout.as_dict()["kubectl"] == kubectl
    assert isinstance(layout.as_dict()["kubectl"], list)


@pytest.mark.parametrize("distribution, api_ca_file, serving_leaf", [
    ("k3s", "/var/lib/rancher/k3s/server/tls/server-ca.crt", "serving-kube-apiserver.crt"),
    ("rke2", "/var/lib/rancher/rke2/server/tls/server-ca.crt", "serving-kube-apiserver.crt"),
    ("kubeadm", "/etc/kubernetes/pki/ca.crt", "apiserver.crt"),
])
def test_the_api_server_ca_is_the_issuer_of_its_serving_cert(distribution, api_ca_file, serving_leaf):
    layout = get_layout(distribution)
    assert layout.api_ca_file() == api_ca_file
    assert [leaf.ca for leaf in layout.leaves if leaf.cert == serving_leaf] == [layout.api_ca]
    assert layout.as_dict()["api_ca"] == layout.api_ca


def test_a_layout_without_an_api_ca_says_so():
    layout = dataclasses.replace(get_layout("rke1"), api_ca=None)
    with pytest.raises(LayoutError, match="rke1 has no API server CA"):
        layout.api_ca_file()


def test_operation_constants_name_known_distributions():
    operations = (layout_mod.CA_SET_DISTRIBUTIONS, layout_mod.SERVICE_KEY_DISTRIBUTIONS,
                  layout_mod.ROTATE_CA_DISTRIBUTIONS, layout_mod.JOIN_TOKEN_DISTRIBUTIONS,
                  layout_mod.HEALTH_GATE_DISTRIBUTIONS)
    for supported in operations:
        assert supported and set(supported) <= set(DISTRIBUTIONS)
        for distribution in supported:
            get_layout(distribution)
    # rotate-ca and K10 join tokens exist only in k3s and RKE2
    assert set(layout_mod.ROTATE_CA_DISTRIBUTIONS) == set(layout_mod.JOIN_TOKEN_DISTRIBUTIONS) == {"k3s", "rke2"}
