# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""x509_textfile: cert_check's report of real files as a Prometheus textfile, judged by the real Prometheus text parser
(prometheus_client) against dates the test gave the certificates (made here with cryptography, not with plugins/)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from ansible.errors import AnsibleFilterError

from ansible_collections.kubepki.certs.plugins.filter.x509_textfile import x509_textfile
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry import check_expiration
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import get_layout

NOW = datetime.datetime(2026, 12, 4, 6, 0, 0, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def certificate(cn, start, end, issuer=None, ca=True):
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(issuer_cert.subject if issuer_cert else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(issuer_key, hashes.SHA256()), key


def pem(*certificates):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def parsed(text):
    """metric name -> [(labels, value)] as the Prometheus parser reads the text."""
    return {family.name: [(s.labels, s.value) for s in family.samples] for family in text_string_to_metric_families(text)}


@pytest.fixture(name="files")
def fixture_files(tmp_path):
    old, old_key = certificate("k3s-server-ca@1700000000", NOW - 3650 * DAY, NOW - DAY)  # expired yesterday
    new, new_key = certificate("k3s-server-ca@1796000000", NOW - DAY, NOW + 3650 * DAY)
    leaf, _key = certificate("kube-apiserver", NOW - DAY, NOW + 3 * DAY, issuer=(new, new_key), ca=False)
    (tmp_path / "server-ca.crt").write_bytes(pem(new, old))  # mid-rotation: the new CA in use, the old one kept
    (tmp_path / "serving-kube-apiserver.crt").write_bytes(pem(leaf, new))
    (tmp_path / "broken.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    del old_key
    return tmp_path, {"old": old, "new": new, "leaf": leaf}


def report(directory):
    layout = get_layout("k3s", data_dir=str(directory))
    return check_expiration(layout, paths=[str(directory)], only_paths=True, warn_days=30, now=NOW)


def by_position(samples, path):
    return {labels["bundle_position"]: (labels, value) for labels, value in samples if labels["filepath"].endswith(path)}


def test_every_certificate_of_a_bundle_with_its_position_and_no_alert_for_the_kept_old_ca(files):
    directory, certs = files
    metrics = parsed(x509_textfile(report(directory), now=NOW))
    bundle = by_position(metrics["kubepki_x509_bundle_cert_not_after"], "/server-ca.crt")
    assert sorted(bundle) == ["1", "2"]
    assert bundle["1"][0]["subject_CN"] == "k3s-server-ca@1796000000"
    assert bundle["1"][1] == certs["new"].not_valid_after_utc.timestamp()
    assert bundle["2"][0]["subject_CN"] == "k3s-server-ca@1700000000"
    assert bundle["2"][1] == certs["old"].not_valid_after_utc.timestamp()
    assert int(bundle["2"][0]["serial_number"], 16) == certs["old"].serial_number
    before = by_position(metrics["kubepki_x509_bundle_cert_not_before"], "/server-ca.crt")
    assert before["2"][1] == certs["old"].not_valid_before_utc.timestamp()
    # the exporter's series, which its alert rules read, describe the CA in use alone: the expired old CA raises none
    for name in ("x509_cert_not_after", "x509_cert_not_before", "x509_cert_expired"):
        assert set(by_position(metrics[name], "/server-ca.crt")) == {"1"}, name
    assert by_position(metrics["x509_cert_not_after"], "/server-ca.crt")["1"][1] == certs["new"].not_valid_after_utc.timestamp()
    assert [labels for labels, value in metrics["x509_cert_expired"] if value != 0] == []
    assert not any(value < NOW.timestamp() for _labels, value in metrics["x509_cert_not_after"])


def test_the_leaf_in_use_is_judged_and_its_chain_listed(files):
    directory, certs = files
    metrics = parsed(x509_textfile(report(directory), now=NOW, host="server-1"))
    leaf = by_position(metrics["x509_cert_not_after"], "/serving-kube-apiserver.crt")
    assert set(leaf) == {"1"} and leaf["1"][1] == certs["leaf"].not_valid_after_utc.timestamp()
    assert leaf["1"][0]["issuer_CN"] == "k3s-server-ca@1796000000" and leaf["1"][0]["hostname"] == "server-1"
    chain = by_position(metrics["kubepki_x509_bundle_cert_not_after"], "/serving-kube-apiserver.crt")
    assert chain["2"][0]["subject_CN"] == "k3s-server-ca@1796000000"
    assert by_position(metrics["x509_cert_expired"], "/serving-kube-apiserver.crt")["1"][1] == 0
    later = parsed(x509_textfile(report(directory), now=NOW + 4 * DAY))  # past the leaf's notAfter
    assert by_position(later["x509_cert_expired"], "/serving-kube-apiserver.crt")["1"][1] == 1


def test_the_same_certificates_give_the_same_text(files):
    directory, _certs = files
    assert x509_textfile(report(directory), now=NOW) == x509_textfile(report(directory), now=NOW + datetime.timedelta(hours=5))


def test_an_unreadable_file_is_an_error_series_with_the_same_label_names(files):
    directory, _certs = files
    metrics = parsed(x509_textfile(report(directory), now=NOW))
    errors = {labels["filepath"].rsplit("/", 1)[-1]: (labels, v) for labels, v in metrics["x509_cert_error"]}
    assert errors["broken.crt"][1] == 1 and errors["server-ca.crt"][1] == 0
    assert set(errors["broken.crt"][0]) == set(errors["server-ca.crt"][0])
    assert "broken.crt" not in str(metrics["x509_cert_not_after"]) + str(metrics["kubepki_x509_bundle_cert_not_after"])


def test_a_fleet_report_labels_each_series_with_its_host(files):
    directory, _certs = files
    entries = [dict(e, host="cp-%d" % (i % 2)) for i, e in enumerate(report(directory)["certificates"])]
    metrics = parsed(x509_textfile({"certificates": entries}, now="2026-12-04T06:00:00Z"))
    assert {labels["hostname"] for labels, _v in metrics["x509_cert_not_after"]} <= {"cp-0", "cp-1"}
    assert all("hostname" in labels for labels, _v in metrics["x509_cert_error"])


def test_bad_input_is_refused():
    with pytest.raises(AnsibleFilterError, match="cert_check result"):
        x509_textfile({"certificates": [{"path": "/x"}]})
    with pytest.raises(AnsibleFilterError, match="ISO 8601"):
        x509_textfile({"certificates": []}, now="yesterday")
