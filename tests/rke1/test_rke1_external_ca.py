# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/external_ca_rke1.yml (role rke1_external_ca, module rke1_external_ca) with the real ansible-playbook on
localhost, the rke double as the rke command: its ``rke cert generate-csr`` is rke v1.8.0's own code (the generator's
``csr``), so the CSRs and keys are the ones rke writes.

One story, in order: a directory missing a CSR and a key is refused naming both, and nothing is written; check mode
writes nothing; the signing; a rerun changes nothing. Verdicts: openssl (``verify -x509_strict`` against the operator's
CA, public keys of certificate and key, subject and subjectAltName of the CSR and of the certificate, the extended key
usages the CSR asks for, dates, key sizes), rke's own reading and validation of a custom certificate directory (the
generator's ``check-custom``: pki.ReadCertsAndKeysFromDir and pki.ValidateBundleContent as ``rke up --custom-certs``
runs them), SHA-256 and mode of every file, and ansible-playbook's exit code and messages.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from rke1_fixtures import CLUSTER_YML, openssl, openssl_fingerprint, openssl_public_keys_equal, openssl_verifies, run_generator

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTION = os.path.dirname(os.path.dirname(HERE))
DOUBLE = os.path.join(HERE, "rke_double.py")
PLAYBOOK_TIMEOUT = 300
# What rke v1.8.0's generate-csr writes for CLUSTER_YML with kubelet serving certificates (etcd on 10.0.0.1 and on
# 203.0.113.2, whose internal address 10.0.0.2 names it); a test below checks the directory holds exactly these.
RKE_CSR_NAMES = sorted(["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kube-node",
                        "kube-admin", "kube-apiserver-proxy-client", "kube-etcd-10-0-0-1", "kube-etcd-10-0-0-2",
                        "kube-kubelet-10-0-0-1", "kube-kubelet-10-0-0-2", "kube-kubelet-10-0-0-3"])
SERVER_AUTH, CLIENT_AUTH = "TLS Web Server Authentication", "TLS Web Client Authentication"


def collections_path():
    parts = COLLECTION.split(os.sep)
    assert parts[-3:] == ["ansible_collections", "kubepki", "certs"], "run from a staged copy (scripts/stage.sh): %s" % COLLECTION
    return os.sep.join(parts[:-3])


def make_ca(directory: str, common_name: str, days: int) -> tuple:
    """(cert, key) paths of a self-signed CA made by openssl."""
    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca-key.pem")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", str(days),
            "-subj", "/CN=" + common_name, "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
    return cert, key


def digest(directory: str) -> dict:
    """SHA-256 and mode of every file under ``directory``."""
    found = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory)] = (hashlib.sha256(handle.read()).hexdigest(),
                                                           oct(os.stat(path).st_mode & 0o777))
    return found


def enddate(path: str, kind: str = "x509") -> datetime.datetime:
    text = openssl(kind, "-in", path, "-noout", "-enddate").stdout.strip().split("=", 1)[1]
    return datetime.datetime.strptime(text, "%b %d %H:%M:%S %Y %Z")


def text_field(text: str, header: str) -> str:
    """The line after ``header`` in openssl's -text output ('' when absent)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith(header):
            return lines[index + 1].strip()
    return ""


@pytest.fixture(scope="module")
def work(generator, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("rke1-external-ca"))
    config = os.path.join(base, "cluster.yml")
    with open(config, "w") as handle:
        handle.write(CLUSTER_YML % "true")
    # A CA valid 2 years and certificates asked for 10: they must end with the CA. Its CN is not rke's "kube-ca".
    ca_cert, ca_key = make_ca(os.path.join(base, "operator-ca"), "operator-rke1-ca", 730)
    return {"base": base, "config": config, "cert_dir": os.path.join(base, "cluster_certs"), "generator": generator,
            "ca_cert": ca_cert, "ca_key": ca_key, "runs": 0, "logs": str(tmp_path_factory.mktemp("rke1-external-ca-logs"))}


def double(work, *args):
    env = dict(os.environ, KUBEPKI_RKE1_GENERATOR=work["generator"])
    return subprocess.run([sys.executable, DOUBLE, *args], capture_output=True, text=True, check=False, env=env,
                          cwd=work["base"], timeout=120)


def playbook(work, *args, **extra_vars):
    extra = {"rke1_external_ca_cluster_yml": work["config"], "rke1_external_ca_ca_cert": work["ca_cert"],
             "rke1_external_ca_ca_key": work["ca_key"], "rke1_external_ca_validity_days": 3650,
             "rke1_external_ca_rke_command": [sys.executable, DOUBLE], "ansible_python_interpreter": sys.executable}
    extra.update(extra_vars)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), KUBEPKI_RKE1_GENERATOR=work["generator"],
               ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="False")
    env.pop("ANSIBLE_CONFIG", None)
    ansible_playbook = shutil.which("ansible-playbook") or os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    cmd = [ansible_playbook, "-i", "localhost,", "-c", "local", "external-ca-rke1.yml", "-e", json.dumps(extra), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=COLLECTION, env=env,
                            timeout=PLAYBOOK_TIMEOUT)
    output = result.stdout + result.stderr
    work["runs"] += 1
    with open(os.path.join(work["logs"], "%02d-playbook.log" % work["runs"]), "w", encoding="utf-8") as handle:
        handle.write("$ %s\n(rc %d)\n%s" % (" ".join(cmd), result.returncode, output))
    assert "PRIVATE KEY" not in output, "key material in the playbook's output"
    return result.returncode, output


def test_01_incomplete_directory_refused_naming_what_is_missing(work):
    partial = os.path.join(work["base"], "partial_certs")
    result = double(work, "cert", "generate-csr", "--config", work["config"], "--cert-dir", partial)
    assert result.returncode == 0, result.stderr
    os.remove(os.path.join(partial, "kube-etcd-10-0-0-2-csr.pem"))
    os.remove(os.path.join(partial, "kube-scheduler-key.pem"))
    before = digest(partial)
    rc, output = playbook(work, rke1_external_ca_cert_dir=partial, rke1_external_ca_generate_csr=False)
    assert rc != 0
    assert "kube-etcd-10-0-0-2-csr.pem" in output and "kube-scheduler-key.pem" in output, output[-3000:]
    assert "rke cert generate-csr" in output
    assert digest(partial) == before, "a refused run wrote into the directory"


def test_02_check_mode_writes_nothing(work):
    result = double(work, "cert", "generate-csr", "--config", work["config"])  # rke's default dir: cluster_certs
    assert result.returncode == 0, result.stderr
    names = sorted(name[:-len("-csr.pem")] for name in os.listdir(work["cert_dir"]) if name.endswith("-csr.pem"))
    assert names == RKE_CSR_NAMES
    before = digest(work["base"])
    rc, output = playbook(work, "--check")
    assert rc == 0, output[-3000:]
    assert digest(work["base"]) == before, "check mode wrote files"
    assert "changed=1" in output or "changed=2" in output, output[-2000:]


def test_03_signed_directory_passes_openssl_and_rke(work):
    rc, output = playbook(work)
    assert rc == 0, output[-3000:]
    assert "next: rke up --custom-certs --cert-dir %s --config %s" % (work["cert_dir"], work["config"]) in output
    cert_dir, ca_cert = work["cert_dir"], work["ca_cert"]
    ca_end = enddate(ca_cert)
    for name in RKE_CSR_NAMES:
        cert, key, csr = (os.path.join(cert_dir, name + suffix) for suffix in (".pem", "-key.pem", "-csr.pem"))
        assert openssl_verifies(cert, ca_cert), name
        assert openssl_public_keys_equal(cert, key), name
        assert oct(os.stat(key).st_mode & 0o777) == "0o600", name
        for option in ("-subject", "-pubkey"):
            assert (openssl("req", "-in", csr, "-noout", option, "-nameopt", "RFC2253").stdout
                    == openssl("x509", "-in", cert, "-noout", option, "-nameopt", "RFC2253").stdout), (name, option)
        request_text = openssl("req", "-in", csr, "-noout", "-text").stdout
        cert_text = openssl("x509", "-in", cert, "-noout", "-text").stdout
        assert (text_field(request_text, "X509v3 Subject Alternative Name")
                == text_field(cert_text, "X509v3 Subject Alternative Name")), name
        requested, granted = (text_field(text, "X509v3 Extended Key Usage") for text in (request_text, cert_text))
        assert CLIENT_AUTH in granted, name
        assert (SERVER_AUTH in granted) == (SERVER_AUTH in requested), (name, requested, granted)
        assert enddate(cert) <= ca_end, name  # 3650 days asked, the CA ends first
    # etcd and the API server carry their addresses; kube-node and kube-admin their groups.
    assert "IP Address:10.0.0.2" in openssl("x509", "-in", os.path.join(cert_dir, "kube-etcd-10-0-0-2.pem"),
                                            "-noout", "-ext", "subjectAltName").stdout
    assert "O=system:nodes" in openssl("x509", "-in", os.path.join(cert_dir, "kube-node.pem"), "-noout", "-subject",
                                       "-nameopt", "RFC2253").stdout
    # The CA files: the operator's certificate, no key anywhere in the directory.
    for name in ("kube-ca", "kube-apiserver-requestheader-ca"):
        assert openssl_fingerprint(os.path.join(cert_dir, name + ".pem")) == openssl_fingerprint(ca_cert), name
        assert not os.path.exists(os.path.join(cert_dir, name + "-key.pem")), name
    with open(work["ca_key"], "rb") as handle:
        ca_key_bytes = handle.read()
    for name in os.listdir(cert_dir):
        with open(os.path.join(cert_dir, name), "rb") as handle:
            assert handle.read() != ca_key_bytes, name
    # The service-account token key: made (RSA 2048, 0600), with a certificate of the CA for it.
    sa_key, sa_cert = (os.path.join(cert_dir, "kube-service-account-token" + s) for s in ("-key.pem", ".pem"))
    assert "Private-Key: (2048 bit" in openssl("pkey", "-in", sa_key, "-noout", "-text").stdout
    assert oct(os.stat(sa_key).st_mode & 0o777) == "0o600"
    assert openssl_verifies(sa_cert, ca_cert) and openssl_public_keys_equal(sa_cert, sa_key)
    # rke's own reading of the directory, as `rke up --custom-certs --cert-dir` does it, accepts it.
    accepted = run_generator(work["generator"], "check-custom", "-config", work["config"], "-cert-dir", cert_dir,
                             check=False)
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert "custom certificates accepted" in accepted.stdout


def test_04_rerun_changes_nothing(work):
    before = digest(work["base"])
    rc, output = playbook(work)
    assert rc == 0, output[-3000:]
    assert "changed=0" in output, output[-2000:]
    assert digest(work["base"]) == before


def test_05_rke_rejects_a_directory_of_another_ca(work, tmp_path):
    # The judge can fail: kube-ca.pem of another CA than the one that signed, rke's validateCAIssuer refuses.
    copy = str(tmp_path / "certs")
    shutil.copytree(work["cert_dir"], copy)
    other_cert, _other_key = make_ca(str(tmp_path / "other"), "other-ca", 30)
    shutil.copyfile(other_cert, os.path.join(copy, "kube-ca.pem"))
    refused = run_generator(work["generator"], "check-custom", "-config", work["config"], "-cert-dir", copy, check=False)
    assert refused.returncode == 1
    assert "is not signed by the custom CA certificate" in refused.stderr
    os.remove(os.path.join(copy, "kube-ca.pem"))
    refused = run_generator(work["generator"], "check-custom", "-config", work["config"], "-cert-dir", copy, check=False)
    assert refused.returncode == 1 and "Failed to find master CA certificate" in refused.stderr


def test_06_fresh_directory_end_to_end(work):
    # No directory yet: the playbook's own `rke cert generate-csr` makes it (reported as a change), then the signing.
    fresh = os.path.join(work["base"], "fresh_certs")
    rc, output = playbook(work, rke1_external_ca_cert_dir=fresh)
    assert rc == 0, output[-3000:]
    assert "Tell whether rke cert generate-csr wrote new CSRs or keys] ***\nchanged: [localhost]" in output, output[-3000:]
    for name in RKE_CSR_NAMES:
        assert openssl_verifies(os.path.join(fresh, name + ".pem"), work["ca_cert"]), name
