# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import ca_set, certs, chain, keys
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import (
    ExistingFileConflict,
    InvalidInputError,
    KeyMismatchError,
    WriteError,
)

FAST = dict(root_key_type="ecdsa-p256", intermediate_key_type="ecdsa-p256")
K3S_FILES = ["root-ca.pem", "root-ca.crt", "root-ca.key", "intermediate-ca.pem", "intermediate-ca.crt",
             "intermediate-ca.key", "server-ca.pem", "server-ca.crt", "server-ca.key", "client-ca.crt",
             "request-header-ca.crt", "etcd/server-ca.crt", "etcd/peer-ca.crt", "etcd/peer-ca.key", "service.key"]


def build(path, **kwargs):
    options = dict(FAST)
    options.update(kwargs)
    plan = ca_set.plan_ca_set(ca_set.CASetRequest(path=str(path), **options))
    ca_set.apply_plan(plan)
    return plan


def snapshot(path):
    result = {}
    for base, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(base, name)
            with open(full, "rb") as handle:
                result[full] = hashlib.sha256(handle.read()).hexdigest()
    return result


def load(path):
    with open(path, "rb") as handle:
        return certs.load_certificates(handle.read(), source=path)


@pytest.mark.parametrize("distribution", ["k3s", "rke2"])
def test_rancher_layout_and_idempotence(tmp_path, distribution):
    tls = tmp_path / "server" / "tls"
    plan = build(tls, distribution=distribution)
    for name in K3S_FILES:
        assert (tls / name).is_file(), name
    assert stat.S_IMODE(os.stat(tls).st_mode) == 0o700
    for name in ("root-ca.key", "intermediate-ca.key", "server-ca.key", "etcd/peer-ca.key", "service.key"):
        assert stat.S_IMODE(os.stat(tls / name).st_mode) == 0o600
    bundle = load(str(tls / "server-ca.crt"))
    assert [certs.common_name(c.subject).split("@")[0] for c in bundle] == [
        "%s-server-ca" % distribution, "%s-intermediate-ca" % distribution, "%s-root-ca" % distribution]
    assert plan.token_ca_hash == hashlib.sha256(certs.certificate_der(bundle[-1])).hexdigest()
    before = snapshot(tls)
    again = ca_set.plan_ca_set(ca_set.CASetRequest(path=str(tls), distribution=distribution, **FAST))
    assert not again.changed
    ca_set.apply_plan(again)
    assert snapshot(tls) == before
    assert again.token_ca_hash == plan.token_ca_hash


def test_supplied_root_and_key_is_used_not_copied(tmp_path):
    src = tmp_path / "secure"
    build(src, distribution="k3s")
    tls = tmp_path / "tls"
    plan = build(tls, distribution="k3s", root_cert=str(src / "root-ca.pem"), root_key=str(src / "root-ca.key"))
    assert not (tls / "root-ca.key").exists()
    assert (tls / "root-ca.pem").read_bytes() == (src / "root-ca.pem").read_bytes()
    assert plan.intermediate.generated
    root = load(str(src / "root-ca.pem"))[0]
    assert certs.is_directly_issued_by(plan.intermediate.certificate, root)


def test_supplied_root_and_intermediate(tmp_path):
    src = tmp_path / "secure"
    build(src, distribution="k3s", key_format="pkcs8", root_key_type="rsa-2048")
    tls = tmp_path / "tls"
    plan = build(tls, distribution="rke2", root_cert=str(src / "root-ca.pem"),
                 intermediate_cert=str(src / "intermediate-ca.pem"), intermediate_key=str(src / "intermediate-ca.key"))
    assert not plan.intermediate.generated and not plan.root.generated
    # The supplied PKCS#8 intermediate key is kept byte for byte.
    assert (tls / "intermediate-ca.key").read_bytes() == (src / "intermediate-ca.key").read_bytes()
    server = load(str(tls / "server-ca.crt"))
    assert chain.verifies(server[0], roots=[server[-1]], intermediates=server[1:-1], usage=None)


def test_root_without_key_when_intermediate_must_be_created(tmp_path):
    src = tmp_path / "secure"
    build(src, distribution="k3s")
    tls = tmp_path / "tls"
    with pytest.raises(InvalidInputError, match="root's private key is missing: supply root_key for .*root-ca.pem"):
        build(tls, distribution="k3s", root_cert=str(src / "root-ca.pem"))
    assert not tls.exists()


def test_intermediate_not_issued_by_root(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    build(first, distribution="k3s")
    build(second, distribution="k3s")
    with pytest.raises(Exception, match="was not issued by the root"):
        build(tmp_path / "tls", distribution="k3s", root_cert=str(first / "root-ca.pem"),
              intermediate_cert=str(second / "intermediate-ca.pem"), intermediate_key=str(second / "intermediate-ca.key"))
    assert not (tmp_path / "tls").exists()


def test_key_not_matching_cert(tmp_path):
    src = tmp_path / "secure"
    build(src, distribution="k3s")
    with pytest.raises(KeyMismatchError, match="client-ca.key does not match"):
        build(tmp_path / "tls", distribution="k3s", root_cert=str(src / "root-ca.pem"),
              root_key=str(src / "client-ca.key"))


def test_malformed_pem(tmp_path):
    bad = tmp_path / "root.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    with pytest.raises(InvalidInputError, match="root.pem: certificate 1 of 1 cannot be parsed"):
        build(tmp_path / "tls", distribution="k3s", root_cert=str(bad))


def test_existing_ca_from_other_intermediate_conflicts_unless_force(tmp_path):
    tls = tmp_path / "tls"
    build(tls, distribution="k3s")
    # Replace the intermediate: the existing cluster CAs no longer chain to it.
    os.remove(tls / "intermediate-ca.pem")
    os.remove(tls / "intermediate-ca.key")
    before = snapshot(tls)
    with pytest.raises(ExistingFileConflict, match="was not issued by"):
        build(tls, distribution="k3s")
    assert snapshot(tls) == before
    plan = build(tls, distribution="k3s", force=True)
    assert plan.cas["server-ca"].generated
    assert (tls / "service.key").read_bytes()  # service key is never regenerated by force


def test_unwritable_directory(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o500)
    try:
        if os.access(str(parent), os.W_OK):
            # root ignores mode bits; use a path under a regular file instead
            target = tmp_path / "file"
            target.write_text("x")
            with pytest.raises((WriteError, InvalidInputError)):
                build(target / "tls", distribution="k3s")
        else:
            with pytest.raises(WriteError, match="not writable"):
                build(parent / "tls", distribution="k3s")
    finally:
        os.chmod(parent, 0o700)


def test_kubeadm_self_signed(tmp_path):
    pki = tmp_path / "pki"
    plan = build(pki, distribution="kubeadm", ca_key_type="ecdsa-p256")
    for name in ("ca.crt", "ca.key", "front-proxy-ca.crt", "etcd/ca.crt", "etcd/ca.key", "sa.key", "sa.pub"):
        assert (pki / name).is_file()
    ca = load(str(pki / "ca.crt"))
    assert len(ca) == 1 and certs.is_self_signed(ca[0])
    assert certs.common_name(ca[0].subject).startswith("kubeadm-kubernetes@") or certs.common_name(ca[0].subject)
    sa = keys.load_private_key((pki / "sa.key").read_bytes(), source="sa.key")
    pub = keys.load_public_keys((pki / "sa.pub").read_bytes(), source="sa.pub")
    assert keys.same_key(sa, pub[0])
    assert plan.discovery_hash == "sha256:" + hashlib.sha256(keys.public_key_der(ca[0])).hexdigest()
    assert not ca_set.plan_ca_set(ca_set.CASetRequest(path=str(pki), distribution="kubeadm")).changed


def test_kubeadm_under_root(tmp_path):
    src = tmp_path / "secure"
    build(src, distribution="k3s")
    plan = build(tmp_path / "pki", distribution="kubeadm", root_cert=str(src / "root-ca.pem"),
                 root_key=str(src / "root-ca.key"), ca_key_type="ecdsa-p256")
    root = load(str(src / "root-ca.pem"))[0]
    assert certs.is_directly_issued_by(plan.cas["ca"].certificate, root)


def test_constrained_path_length_chain_verifies(tmp_path):
    plan = build(tmp_path / "tls", distribution="k3s", constrain_path_length=True)
    assert certs.path_length(plan.root.certificate) == 2
    assert certs.path_length(plan.cas["client-ca"].certificate) == 0
    bundle = load(str(tmp_path / "tls" / "client-ca.crt"))
    assert chain.verifies(bundle[0], roots=[bundle[-1]], intermediates=bundle[1:-1], usage=None)


def test_check_mode_plan_writes_nothing(tmp_path):
    plan = ca_set.plan_ca_set(ca_set.CASetRequest(path=str(tmp_path / "tls"), distribution="k3s", **FAST))
    assert plan.changed and not (tmp_path / "tls").exists()
    report = ca_set.plan_report(plan)
    assert "BEGIN" not in repr(report)
    diff = ca_set.plan_diff(plan)
    assert "server-ca.key: created" in diff["after"]


def test_supplied_root_with_pathlen_zero_is_refused(tmp_path):
    key = keys.generate_private_key("ecdsa-p256")
    root = certs.build_ca_certificate(subject_common_name="tight-root", subject_public_key=key.public_key(),
                                      issuer_certificate=None, issuer_key=key, validity_days=100, path_len=0)
    (tmp_path / "root.pem").write_bytes(certs.dump_certificates([root]))
    (tmp_path / "root.key").write_bytes(keys.serialize_private_key(key))
    with pytest.raises(Exception, match="pathlen 0 leaves room for 0 CA level"):
        build(tmp_path / "tls", distribution="k3s", root_cert=str(tmp_path / "root.pem"),
              root_key=str(tmp_path / "root.key"))
    assert not (tmp_path / "tls").exists()
