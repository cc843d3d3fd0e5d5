# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""check_expiration run the way AWX runs it: through ansible-runner (AWX's executor) with a private data dir, an
inventory and extra variables, once over the whole fleet and once as job slices (each slice a reduced inventory, as
AWX job slicing makes them, publishing its part as an artifact), then the merge playbook fed the slices' artifacts as
AWX feeds a workflow's next node. The merged report files equal the unsliced ones byte for byte, and no job event of
any run carries key material.

The nodes are local (connection local), each a k3s server/tls directory whose certificates and keys the test makes
with cryptography."""

from __future__ import annotations

import base64
import datetime
import json
import os
import sys

import ansible_runner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from test_molecule import COLLECTION_ROOT, collections_path

HOSTS = ["node-%02d" % n for n in range(1, 8)]
SLICES = 3
NOW = datetime.datetime.now(datetime.timezone.utc)


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write_pair(directory, base, certificate, key):
    with open(os.path.join(directory, base + ".crt"), "wb") as handle:
        handle.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(directory, base + ".key"), "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    os.chmod(os.path.join(directory, base + ".key"), 0o600)


def make_node(root, index):
    """A k3s server/tls with its server CA and the apiserver's serving certificate, a distinct expiry per node."""
    tls = os.path.join(root, "server", "tls")
    os.makedirs(tls)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("k3s-server-ca@17000000%02d" % index))
          .issuer_name(name("k3s-server-ca@17000000%02d" % index)).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(days=1))
          .not_valid_after(NOW + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(name("kube-apiserver")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=5 + 40 * index))
            .sign(ca_key, hashes.SHA256()))
    write_pair(tls, "server-ca", ca, ca_key)
    write_pair(tls, "serving-kube-apiserver", leaf, leaf_key)
    return [ca_key, leaf_key]


def inventory(nodes_dir, hosts):
    lines = ["[k3s]"] + ["%s ansible_connection=local kubepki_distribution=k3s kubepki_data_dir=%s "
                         "ansible_python_interpreter=%s" % (h, os.path.join(nodes_dir, h), sys.executable) for h in hosts]
    return "\n".join(lines) + "\n"


def run(work, ident, playbook, extravars, inventory_text=None):
    """One ansible-runner job (as AWX runs one): its status, rc, events and the artifacts set_stats published."""
    kwargs = {"inventory": inventory_text} if inventory_text else {}
    private = os.path.join(work, "runner-" + ident)  # one per job, as AWX prepares one per job
    os.makedirs(private)
    runner = ansible_runner.run(private_data_dir=private, ident=ident,
                                playbook=os.path.join(COLLECTION_ROOT, "playbooks", playbook), extravars=extravars,
                                envvars={"ANSIBLE_COLLECTIONS_PATH": collections_path(), "ANSIBLE_NOCOLOR": "1"},
                                quiet=True, **kwargs)
    events = list(runner.events)
    stats = [e for e in events if e.get("event") == "playbook_on_stats"]
    artifacts = stats[-1]["event_data"].get("artifact_data", {}) if stats else {}
    return runner.status, runner.rc, events, artifacts


def report_files(directory):
    found = {}
    for file_name in ("fleet-expiry.json", "fleet-expiry.md", "fleet-expiry.prom", "fleet-expiry.html"):
        with open(os.path.join(directory, file_name), encoding="utf-8") as handle:
            found[file_name] = handle.read()
    return found


def key_fragments(keys):
    """What would betray a key in an event: its PEM body lines and the start of its base64 (slurp's form)."""
    fragments = []
    for key in keys:
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        fragments += [line for line in pem.decode("ascii").splitlines()[1:-1] if len(line) >= 32]
        fragments.append(base64.b64encode(pem).decode("ascii")[:48])
    return fragments


def test_sliced_run_merged_equals_the_unsliced_report_and_no_event_carries_a_key(tmp_path):
    nodes_dir, keys = str(tmp_path / "nodes"), []
    for index, host in enumerate(HOSTS):
        keys += make_node(os.path.join(nodes_dir, host), index)
    common = {"check_expiration_become": False, "check_expiration_warn_days": 30, "check_expiration_fail_days": 7}
    all_events = []

    status, rc, events, _artifacts = run(str(tmp_path), "unsliced", "check_expiration.yml",
                                         dict(common, check_expiration_report_dir=str(tmp_path / "unsliced")),
                                         inventory(nodes_dir, HOSTS))
    all_events += events
    assert (status, rc) == ("successful", 0), [e.get("stdout") for e in events][-20:]
    unsliced = report_files(str(tmp_path / "unsliced"))
    assert len(json.loads(unsliced["fleet-expiry.json"])["hosts"]) == len(HOSTS)

    parts = {}
    for number in range(SLICES):  # AWX gives slice n of N the hosts n, n+N, n+2N, ... and a job id of its own
        status, rc, events, artifacts = run(str(tmp_path), "slice-%d" % number, "check_expiration.yml",
                                            dict(common, awx_job_id=900 + number, check_expiration_publish_part=True,
                                                 check_expiration_write_report=False),
                                            inventory(nodes_dir, HOSTS[number::SLICES]))
        all_events += events
        assert (status, rc) == ("successful", 0), [e.get("stdout") for e in events][-20:]
        assert list(artifacts) == ["kubepki_expiry_part_%d" % (900 + number)], list(artifacts)
        part = artifacts["kubepki_expiry_part_%d" % (900 + number)]
        assert isinstance(part, str), type(part)  # published as JSON text, the merge's fast path
        assert sorted(json.loads(part)) == sorted(HOSTS[number::SLICES])
        parts.update(artifacts)

    status, rc, events, _artifacts = run(str(tmp_path), "merge", "check_expiration_merge.yml",
                                         dict(common, check_expiration_report_dir=str(tmp_path / "merged"), **parts))
    all_events += events
    assert (status, rc) == ("successful", 0), [e.get("stdout") for e in events][-20:]
    assert report_files(str(tmp_path / "merged")) == unsliced

    text = json.dumps(all_events)
    assert "PRIVATE KEY" not in text
    assert [f for f in key_fragments(keys) if f in text] == []


def test_a_merge_without_parts_is_refused(tmp_path):
    status, rc, events, _artifacts = run(str(tmp_path), "merge", "check_expiration_merge.yml",
                                         {"check_expiration_report_dir": str(tmp_path / "merged")})
    assert status == "failed" and rc != 0
    assert "no variable named kubepki_expiry_part_<id> was passed" in json.dumps(events)
    assert not os.path.exists(str(tmp_path / "merged"))
