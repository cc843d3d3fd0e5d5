# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What still holds the old cluster CA after ``rke cert rotate --rotate-ca``, and what to restart or re-issue.

``--rotate-ca`` is a hard cut: the API server trusts and serves the new ``kube-ca`` only. rke then deletes the pods
of its own add-ons by label (``cluster.RestartClusterPods``); every other pod keeps the CA it read at start, and
service-account token Secrets keep the ``ca.crt`` they were given (rke#3050). Pure functions over the objects
``kubectl get -o json`` returns: no I/O, no cluster access.
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import fingerprint_sha256, load_certificates
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError

# The (label, value) pairs whose pods rke deletes after --rotate-ca (rke v1.8.0 cluster.RestartClusterPods).
RKE_SYSTEM_POD_LABELS = (
    ("k8s-app", "flannel"),
    ("k8s-app", "canal"),
    ("name", "weave-net"),
    ("app", "ingress-nginx"),
    ("k8s-app", "metrics-server"),
    ("k8s-app", "kube-dns"),
    ("k8s-app", "kube-dns-autoscaler"),
    ("k8s-app", "coredns-autoscaler"),
    ("app", "kube-api-auth"),
    ("app", "cattle-cluster-agent"),
    ("k8s-app", "calico-node"),
    ("k8s-app", "calico-kube-controllers"),
)
ROLL_ANNOTATION = "kubepki.io/ca-rotation"
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")
TOKEN_SECRET_TYPE = "kubernetes.io/service-account-token"
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
CA_KEY = "ca.crt"
FINISHED_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str

    @property
    def label(self) -> str:
        return "%s/%s" % (self.namespace, self.name)


def _ref(kind: str, item: dict) -> ObjectRef:
    metadata = item.get("metadata") or {}
    return ObjectRef(kind, str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


def parse_time(text: str) -> datetime.datetime:
    """A Kubernetes or ISO 8601 UTC timestamp (``2026-12-04T17:50:00Z``) as an aware datetime."""
    try:
        moment = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError("not a timestamp: %r (expected ISO 8601, for example 2026-12-04T17:50:00Z)" % text) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def created_before(item: dict, moment: datetime.datetime) -> bool:
    stamp = (item.get("metadata") or {}).get("creationTimestamp")
    return bool(stamp) and parse_time(stamp) < moment


def _live_pod(pod: dict) -> bool:
    return not (pod.get("metadata") or {}).get("deletionTimestamp") and (pod.get("status") or {}).get("phase") not in FINISHED_PHASES


def is_rke_system_pod(pod: dict) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return any(labels.get(label) == value for label, value in RKE_SYSTEM_POD_LABELS)


def pem_holds(pem_text: str, fingerprint: str) -> bool:
    """Whether a PEM bundle (a ``ca.crt`` value) holds the certificate with this SHA-256 fingerprint."""
    try:
        certificates = load_certificates(pem_text.encode("utf-8"), source=CA_KEY)
    except InvalidInputError:
        return False
    return any(fingerprint_sha256(certificate) == fingerprint for certificate in certificates)


def _secret_ca(secret: dict) -> str:
    value = (secret.get("data") or {}).get(CA_KEY) or ""
    try:
        return base64.b64decode(value).decode("utf-8", "replace")
    except ValueError:
        return ""


def system_pods_to_restart(pods: list, rotated_at: datetime.datetime) -> list:
    """rke's add-on pods that started before the rotation (rke's own deletion skipped or failed)."""
    return [_ref("Pod", pod) for pod in pods if is_rke_system_pod(pod) and _live_pod(pod) and created_before(pod, rotated_at)]


def workloads_to_roll(workloads: list, marker: str, namespaces: tuple = ()) -> list:
    """Deployments, DaemonSets and StatefulSets whose pod template does not carry this rotation's annotation."""
    rolled = []
    for item in workloads:
        ref = _ref(str(item.get("kind") or ""), item)
        if ref.kind not in WORKLOAD_KINDS or (namespaces and ref.namespace not in namespaces):
            continue
        template = ((item.get("spec") or {}).get("template") or {}).get("metadata") or {}
        if (template.get("annotations") or {}).get(ROLL_ANNOTATION) != marker:
            rolled.append(ref)
    return rolled


def token_secrets_to_reissue(secrets: list, new_fingerprint: str, namespaces: tuple = ()) -> list:
    """Service-account token Secrets whose ``ca.crt`` lacks the new CA."""
    return [_ref("Secret", secret) for secret in secrets
            if secret.get("type") == TOKEN_SECRET_TYPE and (not namespaces or _ref("Secret", secret).namespace in namespaces)
            and not pem_holds(_secret_ca(secret), new_fingerprint)]


def _owner(pod: dict) -> str:
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return ", owned by %s %s" % (owners[0].get("kind"), owners[0].get("name")) if owners else ", no owner (restart it yourself)"


def old_ca_holders(*, pods: list, configmaps: list, secrets: list, rotated_at: datetime.datetime,
                   new_fingerprint: str) -> list:
    """Every object that still holds (or whose consumers still hold) only the old CA, each with a sentence saying why."""
    holders = []
    for configmap in configmaps:
        ref = _ref("ConfigMap", configmap)
        if ref.name == ROOT_CA_CONFIGMAP and not pem_holds(str((configmap.get("data") or {}).get(CA_KEY) or ""), new_fingerprint):
            holders.append(dict(kind=ref.kind, namespace=ref.namespace, name=ref.name,
                                reason="%s %s does not hold the new kube-ca: the controller-manager has not published it "
                                       "(is it running with the new --root-ca-file?)" % (ref.kind, ref.label)))
    for ref in token_secrets_to_reissue(secrets, new_fingerprint):
        holders.append(dict(kind=ref.kind, namespace=ref.namespace, name=ref.name,
                            reason="%s %s (service-account token) hands out a ca.crt without the new kube-ca" % (ref.kind, ref.label)))
    for pod in pods:
        if _live_pod(pod) and created_before(pod, rotated_at):
            ref = _ref("Pod", pod)
            holders.append(dict(kind=ref.kind, namespace=ref.namespace, name=ref.name,
                                reason="Pod %s started before the CA rotation and may hold the old kube-ca%s" % (ref.label, _owner(pod))))
    return holders


def change_diff(*, system_pods: list, workloads: list, secrets: list, marker: str, new_fingerprint: str) -> dict:
    """The changes as a before/after text, one line per object (``--diff``)."""
    before, after = [], []
    for ref in system_pods:
        before.append("Pod %s: started before the CA rotation" % ref.label)
        after.append("Pod %s: deleted, its controller starts a new one" % ref.label)
    for ref in workloads:
        before.append("%s %s: pod template without %s=%s" % (ref.kind, ref.label, ROLL_ANNOTATION, marker))
        after.append("%s %s: pod template with %s=%s (pods restarted)" % (ref.kind, ref.label, ROLL_ANNOTATION, marker))
    for ref in secrets:
        before.append("Secret %s: %s without the new kube-ca" % (ref.label, CA_KEY))
        after.append("Secret %s: %s is the new kube-ca %s" % (ref.label, CA_KEY, new_fingerprint))
    return {"before": "".join(line + "\n" for line in before), "after": "".join(line + "\n" for line in after)}
