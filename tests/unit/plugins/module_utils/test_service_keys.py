# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import keys
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.service_keys import (
    ServiceKeyRequest,
    apply_service_key_plan,
    plan_service_key_rotation,
)


def rotate(**kwargs):
    plan = plan_service_key_rotation(ServiceKeyRequest(**kwargs))
    backup = apply_service_key_plan(plan)
    return plan, backup


def write_keys(path, *key_list, key_format="traditional"):
    path.write_bytes(b"".join(keys.serialize_private_key(k, key_format=key_format) for k in key_list))


def test_rancher_new_key_first_and_idempotent(tmp_path):
    old1, old2 = keys.generate_private_key("rsa-2048"), keys.generate_private_key("ecdsa-p256")
    current = tmp_path / "service.key"
    write_keys(current, old1, old2, key_format="pkcs8")
    original = current.read_bytes()
    dest = tmp_path / "staging" / "tls" / "service.key"
    plan, _backup = rotate(path=str(current), dest=str(dest), distribution="k3s")
    staged = keys.load_private_keys(dest.read_bytes(), source="dest")
    assert len(staged) == 3
    assert not keys.same_key(staged[0], old1) and keys.same_key(staged[1], old1) and keys.same_key(staged[2], old2)
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    assert current.read_bytes() == original
    assert b"BEGIN RSA PRIVATE KEY" in dest.read_bytes().split(b"-----END")[0]
    again = plan_service_key_rotation(ServiceKeyRequest(path=str(current), dest=str(dest), distribution="k3s"))
    assert not again.changed and again.signing_key_fingerprint == plan.signing_key_fingerprint


def test_keep_limits_old_keys(tmp_path):
    olds = [keys.generate_private_key("ecdsa-p256") for _index in range(3)]
    current = tmp_path / "service.key"
    write_keys(current, *olds)
    dest = tmp_path / "new.key"
    plan, _backup = rotate(path=str(current), dest=str(dest), distribution="rke2", keep=1)
    staged = keys.load_private_keys(dest.read_bytes(), source="dest")
    assert len(staged) == 2 and keys.same_key(staged[1], olds[0]) and plan.dropped_count == 2
    with pytest.raises(InvalidInputError, match="keep must be at least 1"):
        plan_service_key_rotation(ServiceKeyRequest(path=str(current), dest=str(dest), distribution="k3s", keep=0))


def test_dest_equal_path_needs_in_place_and_backs_up(tmp_path):
    current = tmp_path / "service.key"
    old = keys.generate_private_key("rsa-2048")
    write_keys(current, old)
    original = current.read_bytes()
    with pytest.raises(InvalidInputError, match="is the current key file"):
        plan_service_key_rotation(ServiceKeyRequest(path=str(current), dest=str(current), distribution="k3s"))
    _plan, backup = rotate(path=str(current), dest=str(current), distribution="k3s", in_place=True)
    with open(backup, "rb") as handle:
        assert handle.read() == original
    assert len(keys.load_private_keys(current.read_bytes(), source="x")) == 2


def test_kubeadm_sa_pub(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    old = keys.generate_private_key("rsa-2048")
    older = keys.generate_private_key("rsa-2048")
    (pki / "sa.key").write_bytes(keys.serialize_private_key(old))
    (pki / "sa.pub").write_bytes(keys.serialize_public_key(old) + keys.serialize_public_key(older))
    dest = tmp_path / "stage" / "sa.key"
    rotate(path=str(pki / "sa.key"), dest=str(dest), distribution="kubeadm")
    new = keys.load_private_key(dest.read_bytes(), source="sa.key")
    pubs = keys.load_public_keys((tmp_path / "stage" / "sa.pub").read_bytes(), source="sa.pub")
    assert [keys.public_key_der(p) for p in pubs] == [keys.public_key_der(k) for k in (new, old, older)]
    assert not plan_service_key_rotation(ServiceKeyRequest(path=str(pki / "sa.key"), dest=str(dest),
                                                           distribution="kubeadm")).changed


def test_missing_and_malformed_current(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        plan_service_key_rotation(ServiceKeyRequest(path=str(tmp_path / "nope"), dest=str(tmp_path / "d"),
                                                    distribution="k3s"))
    bad = tmp_path / "service.key"
    bad.write_bytes(b"not a key")
    with pytest.raises(InvalidInputError, match="service.key holds no PEM private key"):
        plan_service_key_rotation(ServiceKeyRequest(path=str(bad), dest=str(tmp_path / "d"), distribution="k3s"))
    assert not (tmp_path / "d").exists()
