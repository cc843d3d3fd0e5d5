# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""rke1_state / rke1_check: reading cluster.rkestate, its report, node expectations and stale node files.

Certificates are made by openssl; the verdicts on validity, signer and key match are checked against
``openssl verify -x509_strict`` and openssl's public keys. (tests/rke1 does the same on files rke's own Go code
wrote.)
"""

from __future__ import annotations

import calendar
import datetime
import json
import os
import subprocess

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_check import (
    check_rkestate,
    compare_node_files,
    node_certificate_names,
    node_expectations,
    pending_names,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_state import (
    StateNode,
    read_rkestate,
)

NAMES = get_layout("rke1").extra["certificate_names"]


def _openssl(*args, check=True):
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError("openssl %s: %s" % (" ".join(args), result.stderr))
    return result


class Made:
    """A certificate and key made by openssl in ``directory``."""

    def __init__(self, directory, name):
        self.cert = os.path.join(directory, name + ".pem")
        self.key = os.path.join(directory, name + "-key.pem")

    @property
    def cert_pem(self) -> str:
        with open(self.cert) as handle:
            return handle.read()

    @property
    def key_pem(self) -> str:
        with open(self.key) as handle:
            return handle.read()


def make_ca(directory, name, days=3650):
    made = Made(str(directory), name)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", made.key, "-out", made.cert,
             "-days", str(days), "-subj", "/CN=%s" % name,
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return made


def make_leaf(directory, name, ca, days=3650):
    made = Made(str(directory), name)
    csr = os.path.join(str(directory), name + ".csr")
    ext = os.path.join(str(directory), name + ".ext")
    with open(ext, "w") as handle:
        handle.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                     "extendedKeyUsage=clientAuth,serverAuth\n")
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", made.key, "-out", csr,
             "-subj", "/CN=system:%s" % name)
    _openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial", "-days", str(days),
             "-extfile", ext, "-out", made.cert)
    return made


def entry(made, name, *, key=True):
    return {"certificatePEM": made.cert_pem, "keyPEM": made.key_pem if key else "", "name": name,
            "commonName": "system:" + name, "ouName": "", "path": "/etc/kubernetes/ssl/%s.pem" % name,
            "keyPath": "/etc/kubernetes/ssl/%s-key.pem" % name, "configPath": "", "config": ""}


def openssl_verifies(leaf_file, ca_file, *, at=None) -> bool:
    args = ["verify", "-x509_strict", "-CAfile", ca_file]
    if at is not None:
        args += ["-attime", str(calendar.timegm(at.utctimetuple()))]
    return _openssl(*(args + [leaf_file]), check=False).returncode == 0


def openssl_key_matches(made_cert, key_file) -> bool:
    cert_pub = _openssl("x509", "-in", made_cert, "-noout", "-pubkey").stdout
    key_pub = _openssl("pkey", "-in", key_file, "-pubout").stdout
    return cert_pub == key_pub


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """kube-ca, the request-header CA, three leaves: kube-apiserver, kube-apiserver-proxy-client (request-header CA),
    kube-node, and a second kube-apiserver (for a stale node file)."""
    directory = tmp_path_factory.mktemp("rke1pki")
    ca = make_ca(directory, "kube-ca")
    rh = make_ca(directory, "kube-apiserver-requestheader-ca")
    other = tmp_path_factory.mktemp("rke1other")
    return {
        "dir": str(directory),
        "kube-ca": ca,
        "kube-apiserver-requestheader-ca": rh,
        "kube-apiserver": make_leaf(directory, "kube-apiserver", ca),
        "kube-apiserver-proxy-client": make_leaf(directory, "kube-apiserver-proxy-client", rh),
        "kube-node": make_leaf(directory, "kube-node", ca, days=30),
        "kube-apiserver-new": make_leaf(other, "kube-apiserver", ca),
    }


def state_document(pki, *, desired_overrides=None, current=True):
    names = ("kube-ca", "kube-apiserver-requestheader-ca", "kube-apiserver", "kube-apiserver-proxy-client", "kube-node")
    bundle = dict((name, entry(pki[name], name)) for name in names)
    nodes = [{"address": "10.0.0.1", "role": ["controlplane", "etcd", "worker"]},
             {"address": "203.0.113.2", "internalAddress": "10.0.0.2", "role": ["etcd"]},
             {"address": "10.0.0.3", "role": ["worker"]}]
    desired = dict(bundle)
    desired.update(desired_overrides or {})
    document = {"desiredState": {"rkeConfig": {"nodes": nodes}, "certificatesBundle": desired}}
    if current:
        document["currentState"] = {"rkeConfig": {"nodes": nodes}, "certificatesBundle": bundle}
    return document


def write_state(tmp_path, document) -> str:
    path = str(tmp_path / "cluster.rkestate")
    with open(path, "w") as handle:
        json.dump(document, handle)
    return path


# ------------------------------------------------------------------------------------------------ reading

@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe", "is not UTF-8"),
    (b"[1, 2]", "neither currentState nor desiredState"),
    (b'{"currentState": {}}', "holds no certificatesBundle"),
    (b'{"currentState": {"certificatesBundle": []}}', "certificatesBundle is list"),
    (b'{"currentState": {"certificatesBundle": {"kube-ca": 3}}}', 'certificatesBundle["kube-ca"] is int'),
    (b'{"currentState": {"certificatesBundle": {"kube-ca": {"certificatePEM": 3}}}}', "certificatePEM is int"),
])
def test_unusable_state_files_are_refused_naming_the_file_and_what_to_do(tmp_path, content, expected):
    path = str(tmp_path / "cluster.rkestate")
    if content is not None:
        with open(path, "wb") as handle:
            handle.write(content)
    with pytest.raises(InvalidInputError) as caught:
        read_rkestate(path)
    assert expected in caught.value.message
    assert path in caught.value.message
    assert "rke up" in caught.value.message or "backup" in caught.value.message
    assert caught.value.path == path


def test_reads_both_sections_names_fields_and_nodes(tmp_path, pki):
    state = read_rkestate(write_state(tmp_path, state_document(pki)))
    assert sorted(state.current) == sorted(state.desired) == sorted(
        ["kube-ca", "kube-apiserver-requestheader-ca", "kube-apiserver", "kube-apiserver-proxy-client", "kube-node"])
    apiserver = state.current["kube-apiserver"]
    assert apiserver.certificate_pem == pki["kube-apiserver"].cert_pem
    assert apiserver.key_pem == pki["kube-apiserver"].key_pem
    assert (apiserver.common_name, apiserver.path, apiserver.label) == (
        "system:kube-apiserver", "/etc/kubernetes/ssl/kube-apiserver.pem", "currentState/kube-apiserver")
    assert state.nodes["currentState"][1] == StateNode(address="203.0.113.2", internal_address="10.0.0.2",
                                                       hostname_override="", roles=("etcd",))


# ------------------------------------------------------------------------------------------------ report

def _by_name(report, section="currentState"):
    return dict((item["path"].rsplit("#%s/" % section, 1)[1], item) for item in report["certificates"]
                if "#%s/" % section in item["path"])


def test_report_signer_and_key_match_agree_with_openssl(tmp_path, pki):
    state = read_rkestate(write_state(tmp_path, state_document(pki)))
    now = datetime.datetime.now(datetime.timezone.utc)
    entries = _by_name(check_rkestate(state, now=now, warn_days=7))
    ca_files = {"kube-ca": pki["kube-ca"].cert,
                "kube-apiserver-requestheader-ca": pki["kube-apiserver-requestheader-ca"].cert}
    for name in ("kube-apiserver", "kube-apiserver-proxy-client", "kube-node"):
        signer = entries[name]["signed_by"].rsplit("/", 1)[1]
        verified_by = [ca for ca, path in sorted(ca_files.items()) if openssl_verifies(pki[name].cert, path)]
        assert verified_by == [signer], name
        assert entries[name]["key_matches"] is openssl_key_matches(pki[name].cert, pki[name].key) is True
        assert entries[name]["status"] == "OK"
    assert entries["kube-ca"]["signed_by"] == "self"
    assert entries["kube-node"]["path"] == "%s#currentState/kube-node" % state.path


def test_expiry_verdicts_agree_with_openssl_at_the_same_moment(tmp_path, pki):
    state = read_rkestate(write_state(tmp_path, state_document(pki)))
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=45)  # kube-node: 30 days
    entries = _by_name(check_rkestate(state, now=later))
    assert entries["kube-node"]["status"] == "EXPIRED"
    assert not openssl_verifies(pki["kube-node"].cert, pki["kube-ca"].cert, at=later)
    assert entries["kube-apiserver"]["status"] == "OK"
    assert openssl_verifies(pki["kube-apiserver"].cert, pki["kube-ca"].cert, at=later)
    soon = _by_name(check_rkestate(state, warn_days=60))
    assert soon["kube-node"]["status"] == "WARNING"


def test_a_key_of_another_certificate_is_a_mismatch_as_openssl_sees_it(tmp_path, pki):
    document = state_document(pki)
    document["currentState"]["certificatesBundle"]["kube-node"]["keyPEM"] = pki["kube-apiserver"].key_pem
    entries = _by_name(check_rkestate(read_rkestate(write_state(tmp_path, document))))
    assert entries["kube-node"]["key_matches"] is False
    assert openssl_key_matches(pki["kube-node"].cert, pki["kube-apiserver"].key) is False


def test_a_broken_entry_is_invalid_and_the_rest_is_reported(tmp_path, pki):
    document = state_document(pki)
    document["currentState"]["certificatesBundle"]["kube-node"]["certificatePEM"] = "-----BEGIN CERTIFICATE-----\nAA"
    report = check_rkestate(read_rkestate(write_state(tmp_path, document)))
    entries = _by_name(report)
    assert entries["kube-node"]["status"] == "INVALID"
    assert report["summary"]["counts"]["OK"] == 4


def test_pending_desired_certificates_are_reported_apart(tmp_path, pki):
    document = state_document(pki, desired_overrides={
        "kube-apiserver": entry(pki["kube-apiserver-new"], "kube-apiserver")})
    state = read_rkestate(write_state(tmp_path, document))
    assert pending_names(state) == ["kube-apiserver"]
    report = check_rkestate(state)
    assert sorted(_by_name(report, "desiredState")) == ["kube-apiserver"]
    assert len(_by_name(report)) == 5
    never_deployed = read_rkestate(write_state(tmp_path, state_document(pki, current=False)))
    assert pending_names(never_deployed) == []
    assert len(_by_name(check_rkestate(never_deployed), "desiredState")) == 5


# ------------------------------------------------------------------------------------------------ nodes

def test_node_certificate_names_follow_roles_and_internal_addresses():
    nodes = (StateNode("10.0.0.1", "", "", ("controlplane", "worker")),
             StateNode("203.0.113.2", "10.0.0.2", "", ("etcd",)),
             StateNode("10.0.0.3", "10.0.0.3", "", ("etcd", "worker")))
    control = node_certificate_names(NAMES, nodes[0], all_nodes=nodes, kubelet_serving=False)
    assert control[:3] == ["kube-ca", "kube-proxy", "kube-node"]
    assert "kube-apiserver" in control and not any(name.startswith("kube-etcd-1") for name in control)
    etcd = node_certificate_names(NAMES, nodes[1], all_nodes=nodes, kubelet_serving=True)
    assert etcd == ["kube-ca", "kube-proxy", "kube-node", "kube-kubelet-10-0-0-1", "kube-kubelet-10-0-0-2",
                    "kube-kubelet-10-0-0-3", "kube-etcd-10-0-0-2", "kube-etcd-10-0-0-3"]


def _node_dir(tmp_path, pki, files):
    ssl = tmp_path / "node" / "etc" / "kubernetes" / "ssl"
    ssl.mkdir(parents=True)
    for name, made in files.items():
        (ssl / (name + ".pem")).write_text(made.cert_pem)
    return str(ssl)


def test_stale_and_missing_node_files_are_named_with_what_differs(tmp_path, pki):
    state = read_rkestate(write_state(tmp_path, state_document(pki)))
    expected = node_expectations(state, NAMES)
    assert sorted(expected) == ["10.0.0.1", "10.0.0.3", "203.0.113.2"]
    control = expected["10.0.0.1"]
    # kube-proxy is not in this bundle: only the names the state holds are expected
    assert sorted(control) == ["kube-apiserver", "kube-apiserver-proxy-client", "kube-apiserver-requestheader-ca",
                               "kube-ca", "kube-node"]
    ssl = _node_dir(tmp_path, pki, {"kube-ca": pki["kube-ca"], "kube-node": pki["kube-node"],
                                    "kube-apiserver": pki["kube-apiserver-new"],
                                    "kube-apiserver-requestheader-ca": pki["kube-apiserver-requestheader-ca"]})
    stale = compare_node_files(lambda name: os.path.join(ssl, name), control)
    assert [(item["name"], item["problem"]) for item in stale] == [
        ("kube-apiserver", "differs"), ("kube-apiserver-proxy-client", "missing")]
    differs = stale[0]["reason"]
    node_serial = _openssl("x509", "-in", pki["kube-apiserver-new"].cert, "-noout", "-serial").stdout.split("=")[1]
    state_serial = _openssl("x509", "-in", pki["kube-apiserver"].cert, "-noout", "-serial").stdout.split("=")[1]
    assert node_serial.strip() in differs and state_serial.strip() in differs
    assert os.path.join(ssl, "kube-apiserver.pem") in differs and "currentState/kube-apiserver" in differs
    assert "rke up" in differs


def test_expectations_without_a_fingerprint_are_refused():
    with pytest.raises(InvalidInputError, match="rkestate_expected\\[kube-ca\\] has no sha256"):
        compare_node_files(lambda name: name, {"kube-ca": {"serial": "01"}})
