# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""rke1_old_ca: what holds the old CA after an RKE1 CA rotation, over objects shaped as ``kubectl get -o json``
returns them. The CAs are made by openssl and their fingerprints read by openssl; the cluster side (kubectl, the real
API server and controller-manager) is judged in tests/rke1/test_rke1_rotate_ca_cluster_lab.py."""

from __future__ import annotations

import base64
import datetime
import subprocess

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_old_ca import (
    ROLL_ANNOTATION,
    ObjectRef,
    change_diff,
    old_ca_holders,
    parse_time,
    pem_holds,
    system_pods_to_restart,
    token_secrets_to_reissue,
    workloads_to_roll,
)

ROTATED_AT = datetime.datetime(2026, 12, 4, 18, 0, tzinfo=datetime.timezone.utc)
BEFORE, AFTER = "2026-12-04T17:59:59Z", "2026-12-04T18:00:01Z"


def _ca(tmp_path, name):
    cert, key = str(tmp_path / (name + ".pem")), str(tmp_path / (name + "-key.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "30",
                    "-subj", "/CN=" + name, "-addext", "basicConstraints=critical,CA:TRUE"], check=True, capture_output=True)
    fingerprint = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256"], check=True,
                                 capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    with open(cert, encoding="utf-8") as handle:
        return handle.read(), fingerprint


@pytest.fixture(scope="module")
def cas(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cas")
    return {"old": _ca(directory, "old-kube-ca"), "new": _ca(directory, "new-kube-ca")}


def pod(name, namespace="shop", created=BEFORE, labels=None, owner=None, phase="Running", deleting=False):
    metadata = {"name": name, "namespace": namespace, "creationTimestamp": created, "labels": labels or {}}
    if owner:
        metadata["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner}]
    if deleting:
        metadata["deletionTimestamp"] = AFTER
    return {"metadata": metadata, "status": {"phase": phase}}


def token_secret(name, pem, namespace="shop"):
    data = {"token": base64.b64encode(b"not-a-real-token").decode()}
    if pem is not None:
        data["ca.crt"] = base64.b64encode(pem.encode()).decode()
    return {"metadata": {"name": name, "namespace": namespace}, "type": "kubernetes.io/service-account-token", "data": data}


def test_pem_holds_matches_by_openssl_fingerprint_in_a_bundle(cas):
    old_pem, old_fp = cas["old"]
    new_pem, new_fp = cas["new"]
    assert pem_holds(new_pem, new_fp) and not pem_holds(old_pem, new_fp)
    assert pem_holds(old_pem + new_pem, new_fp)  # a bundle holding both
    assert not pem_holds("", new_fp) and not pem_holds("garbage", new_fp)


def test_system_pods_are_rkes_labels_started_before_the_rotation():
    pods = [pod("dns-old", "kube-system", BEFORE, {"k8s-app": "kube-dns"}),
            pod("dns-new", "kube-system", AFTER, {"k8s-app": "kube-dns"}),
            pod("ingress", "ingress-nginx", BEFORE, {"app": "ingress-nginx"}),
            pod("weave", "kube-system", BEFORE, {"name": "weave-net"}),
            pod("web", "shop", BEFORE, {"app": "web"}),
            pod("dns-going", "kube-system", BEFORE, {"k8s-app": "kube-dns"}, deleting=True),
            pod("dns-done", "kube-system", BEFORE, {"k8s-app": "kube-dns"}, phase="Succeeded")]
    assert [ref.label for ref in system_pods_to_restart(pods, ROTATED_AT)] == [
        "kube-system/dns-old", "ingress-nginx/ingress", "kube-system/weave"]


def test_workloads_to_roll_skip_those_already_annotated_and_other_namespaces():
    def workload(kind, name, namespace, marker=None):
        annotations = {ROLL_ANNOTATION: marker} if marker else {}
        return {"kind": kind, "metadata": {"name": name, "namespace": namespace},
                "spec": {"template": {"metadata": {"annotations": annotations}}}}
    items = [workload("Deployment", "web", "shop"), workload("DaemonSet", "agent", "ops", "abc"),
             workload("StatefulSet", "db", "shop", "old"), workload("CronJob", "job", "shop")]
    assert [(r.kind, r.label) for r in workloads_to_roll(items, "abc")] == [("Deployment", "shop/web"), ("StatefulSet", "shop/db")]
    assert [r.label for r in workloads_to_roll(items, "abc", ("ops",))] == []


def test_token_secrets_without_the_new_ca_are_reissued(cas):
    old_pem = cas["old"][0]
    new_pem, new_fp = cas["new"]
    secrets = [token_secret("stale", old_pem), token_secret("fresh", new_pem), token_secret("empty", None),
               token_secret("other-ns", old_pem, namespace="ops"),
               {"metadata": {"name": "opaque", "namespace": "shop"}, "type": "Opaque", "data": {}}]
    assert [r.label for r in token_secrets_to_reissue(secrets, new_fp)] == ["shop/stale", "shop/empty", "ops/other-ns"]
    assert [r.label for r in token_secrets_to_reissue(secrets, new_fp, ("ops",))] == ["ops/other-ns"]


def test_old_ca_holders_name_each_object_with_a_reason(cas):
    old_pem = cas["old"][0]
    new_pem, new_fp = cas["new"]
    configmaps = [{"metadata": {"name": "kube-root-ca.crt", "namespace": "shop"}, "data": {"ca.crt": old_pem}},
                  {"metadata": {"name": "kube-root-ca.crt", "namespace": "ops"}, "data": {"ca.crt": new_pem}}]
    pods = [pod("tool", created=BEFORE), pod("web-1", created=BEFORE, owner="web-1"), pod("fresh", created=AFTER)]
    holders = old_ca_holders(pods=pods, configmaps=configmaps, secrets=[token_secret("stale", old_pem)],
                             rotated_at=ROTATED_AT, new_fingerprint=new_fp)
    assert [(h["kind"], h["namespace"], h["name"]) for h in holders] == [
        ("ConfigMap", "shop", "kube-root-ca.crt"), ("Secret", "shop", "stale"), ("Pod", "shop", "tool"), ("Pod", "shop", "web-1")]
    reasons = [h["reason"] for h in holders]
    assert "no owner (restart it yourself)" in reasons[2] and "owned by ReplicaSet web-1" in reasons[3]
    assert all("not-a-real-token" not in reason for reason in reasons)


def test_parse_time_takes_kubernetes_timestamps_and_refuses_garbage():
    assert parse_time("2026-12-04T18:00:00Z") == ROTATED_AT
    assert parse_time("2026-12-04T18:00:00") == ROTATED_AT
    with pytest.raises(InvalidInputError, match="not a timestamp"):
        parse_time("yesterday")


def test_change_diff_has_one_line_per_object_before_and_after():
    diff = change_diff(system_pods=[ObjectRef("Pod", "kube-system", "dns-1")], workloads=[ObjectRef("Deployment", "shop", "web")],
                       secrets=[ObjectRef("Secret", "shop", "t")], marker="abc", new_fingerprint="AA:BB")
    assert diff["before"].splitlines() == ["Pod kube-system/dns-1: started before the CA rotation",
                                           "Deployment shop/web: pod template without kubepki.io/ca-rotation=abc",
                                           "Secret shop/t: ca.crt without the new kube-ca"]
    assert diff["after"].splitlines()[2] == "Secret shop/t: ca.crt is the new kube-ca AA:BB"
    assert change_diff(system_pods=[], workloads=[], secrets=[], marker="abc", new_fingerprint="AA") == {"before": "", "after": ""}
