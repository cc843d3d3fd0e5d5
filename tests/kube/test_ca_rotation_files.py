# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeadm_ca_rotation's files, phase by phase, on a node the real kubeadm made (certificates, kubeconfigs, static pod
manifests), judged by OpenSSL (verify -x509_strict), PyYAML and the real kubeadm.

- prepare: every CA file and kubeconfig trusts old + new; the serving certificates verify against the new CA alone
  and, through the cross-signed certificate served with them, against the old CA alone; the client certificates are
  untouched; the controller-manager's single-file flags name pki/ca-next.*; kubeadm still reads the node;
- promote: every certificate and kubeconfig credential verifies against the new CA alone; kubeadm's own ``certs renew``
  now signs with the new CA;
- finalize: the old CA is gone from every bundle and kubeconfig, the serving certificates no longer verify against the
  old CA alone, the flags name ca.crt/ca.key again and the -next files are gone;
- every phase: check mode writes nothing, a rerun writes nothing, out-of-order phases are refused;
- the service-account key, judged by OpenSSL: sa.pub holds previous + new at prepare while sa.key still signs with
  the previous key, sa.key is the new key at promote, sa.pub the new key alone at finalize;
- rollback of a phase restores every file byte for byte and removes what it created;
- a full state directory (a tmpfs filled up) fails stage and apply with the OS's message, leaves no live file changed
  and no temp file behind, and both converge once there is room again.
"""

from __future__ import annotations

import base64
import os
import re

import yaml

from kubeadm_node import FILES, KUBECONFIGS, copy_node, kubeadm_report, kubeadm_run, run_module, snapshot

CA_FILES = {"ca": "pki/ca.crt", "front-proxy-ca": "pki/front-proxy-ca.crt", "etcd-ca": "pki/etcd/ca.crt"}
CA_OF = {"apiserver": "ca", "apiserver-kubelet-client": "ca", "front-proxy-client": "front-proxy-ca",
         "etcd-server": "etcd-ca", "etcd-peer": "etcd-ca", "etcd-healthcheck-client": "etcd-ca",
         "apiserver-etcd-client": "etcd-ca"}
SERVING = ("apiserver", "etcd-server", "etcd-peer")
KCM_FLAGS = ("--client-ca-file", "--cluster-signing-cert-file", "--cluster-signing-key-file")


def pems(path):
    with open(path, encoding="ascii") as handle:
        return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", handle.read(), re.S)


def write(path, text):
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)
    return path


def verify(cert_pem, ca_pem, tmp_path, untrusted=None):
    """openssl verify -x509_strict: True when it accepts the certificate against ca_pem alone."""
    import subprocess  # pylint: disable=import-outside-toplevel

    argv = ["openssl", "verify", "-x509_strict", "-CAfile", write(str(tmp_path / "v-ca.pem"), ca_pem)]
    if untrusted:
        argv += ["-untrusted", write(str(tmp_path / "v-untrusted.pem"), "".join(untrusted))]
    argv.append(write(str(tmp_path / "v-leaf.pem"), cert_pem))
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def public_keys(path, private=False):
    """DER of every public key in a PEM file (of the private key's public half), as OpenSSL reads them."""
    import subprocess  # pylint: disable=import-outside-toplevel

    with open(path, encoding="ascii") as handle:
        label = "(?:RSA )?PRIVATE KEY" if private else "PUBLIC KEY"
        blocks = re.findall(r"-----BEGIN %s-----.+?-----END %s-----\n" % (label, label), handle.read(), re.S)
    argv = ["openssl", "pkey", "-outform", "DER"] + (["-pubout"] if private else ["-pubin"])
    return [subprocess.run(argv, input=block.encode("ascii"), capture_output=True, check=True).stdout for block in blocks]


def kubeconfig_parts(node, name):
    with open(os.path.join(node["dir"], name), encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode("ascii")
    cert = base64.b64decode(config["users"][0]["user"]["client-certificate-data"]).decode("ascii")
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", ca, re.S), cert


def kcm_flags(node):
    with open(os.path.join(node["dir"], "manifests", "kube-controller-manager.yaml"), encoding="utf-8") as handle:
        command = yaml.safe_load(handle)["spec"]["containers"][0]["command"]
    return {arg.split("=", 1)[0]: arg.split("=", 1)[1] for arg in command if arg.split("=", 1)[0] in KCM_FLAGS}


def node_with_manifests(kubeadm, cp1, target):
    node = copy_node(cp1, target)
    kubeadm_run(kubeadm, node["dir"], "init", "phase", "control-plane", "all", "--config", node["config"])
    kubeadm_run(kubeadm, node["dir"], "init", "phase", "etcd", "local", "--config", node["config"])
    return node


def step(node, tmp_path, state, name, phase=None, check=False):
    args = {"step": name, "state_dir": state}
    if phase:
        args["phase"] = phase
    return run_module(node, tmp_path, "kubeadm_ca_rotation", args, check=check)


def run_phase(node, tmp_path, state, phase):
    """check mode writes nothing; the phase; a rerun writes nothing; record. Returns the phase's result."""
    before = snapshot(node["dir"])
    rc, planned = step(node, tmp_path, state, "apply", phase, check=True)
    assert rc == 0 and planned["changed"] and planned["changes"], planned
    assert snapshot(node["dir"]) == before
    rc, result = step(node, tmp_path, state, "apply", phase)
    assert rc == 0 and result["changed"], result
    assert sorted(c["path"] for c in result["changes"]) == sorted(c["path"] for c in planned["changes"])
    rc, again = step(node, tmp_path, state, "apply", phase)
    assert rc == 0 and not again["changed"] and again["changes"] == [], again
    rc, recorded = step(node, tmp_path, state, "record", phase)
    assert rc == 0 and recorded["changed"] and phase in recorded["done"], recorded
    return result


def test_three_phases_on_a_kubeadm_node(kubeadm, cp1, tmp_path):
    node = node_with_manifests(kubeadm, cp1, str(tmp_path / "node"))
    state = str(tmp_path / "state")
    old = {name: pems(os.path.join(node["dir"], path)) for name, path in CA_FILES.items()}
    assert all(len(v) == 1 for v in old.values())
    sa_key, sa_pub = os.path.join(node["dir"], "pki", "sa.key"), os.path.join(node["dir"], "pki", "sa.pub")
    old_signing = public_keys(sa_key, private=True)
    assert public_keys(sa_pub) == old_signing

    rc, refused = step(node, tmp_path, state, "apply", "promote")
    assert rc != 0 and "not recorded as done" in refused["msg"], refused
    rc, staged = step(node, tmp_path, state, "stage")
    assert rc == 0 and staged["changed"], staged
    assert oct(os.stat(os.path.join(state, "staged")).st_mode & 0o777) == "0o700"
    assert oct(os.stat(os.path.join(state, "staged", "ca.key")).st_mode & 0o777) == "0o600"
    rc, restaged = step(node, tmp_path, state, "stage")
    assert rc == 0 and not restaged["changed"] and restaged["cas"] == staged["cas"], restaged
    new = {name: base64.b64decode(item["new_pem_b64"]).decode("ascii") for name, item in staged["cas"].items()}
    cross = {name: pems(os.path.join(state, "staged", path[len("pki/"):-len(".crt")] + "-cross.crt"))[0]
             for name, path in CA_FILES.items()}
    assert staged["cas"]["ca"]["old_discovery_hash"] != staged["cas"]["ca"]["new_discovery_hash"]
    assert oct(os.stat(os.path.join(state, "staged", "sa.key")).st_mode & 0o777) == "0o600"
    new_signing = public_keys(os.path.join(state, "staged", "sa.key"), private=True)
    assert new_signing != old_signing and restaged["service_account_key"] == staged["service_account_key"]

    # prepare
    run_phase(node, tmp_path, state, "prepare")
    for name, path in CA_FILES.items():
        assert pems(os.path.join(node["dir"], path)) == old[name] + [new[name]], name
    for conf in KUBECONFIGS + ("kubelet.conf",):
        trusted, cert = kubeconfig_parts(node, conf)
        assert trusted == old["ca"] + [new["ca"]], conf
        assert verify(cert, old["ca"][0], tmp_path), conf  # credentials untouched until promote
    for name, base in FILES.items():
        chain = pems(os.path.join(node["dir"], base + ".crt"))
        ca = CA_OF[name]
        if name in SERVING:
            assert len(chain) == 2 and chain[1] == cross[ca], name
            assert verify(chain[0], new[ca], tmp_path), name
            assert verify(chain[0], old[ca][0], tmp_path, untrusted=chain[1:]), name
            assert not verify(chain[0], old[ca][0], tmp_path), name  # the cross-signed certificate makes the path
        else:
            assert chain == pems(os.path.join(cp1["dir"], base + ".crt")), name
    assert set(kcm_flags(node).values()) == {"/etc/kubernetes/pki/ca-next.crt", "/etc/kubernetes/pki/ca-next.key"}
    assert pems(os.path.join(node["dir"], "pki", "ca-next.crt")) == [new["ca"]]
    assert len(kubeadm_report(kubeadm, node)["certificates"]) == 11  # kubeadm still reads the node
    assert public_keys(sa_key, private=True) == old_signing and public_keys(sa_pub) == old_signing + new_signing

    # promote
    run_phase(node, tmp_path, state, "promote")
    for name, path in CA_FILES.items():
        assert pems(os.path.join(node["dir"], path)) == [new[name]] + old[name], name
    for conf in KUBECONFIGS + ("kubelet.conf",):
        trusted, cert = kubeconfig_parts(node, conf)
        assert trusted == [new["ca"]] + old["ca"] and verify(cert, new["ca"], tmp_path), conf
        assert not verify(cert, old["ca"][0], tmp_path), conf
    for name, base in FILES.items():
        assert verify(pems(os.path.join(node["dir"], base + ".crt"))[0], new[CA_OF[name]], tmp_path), name
    assert public_keys(sa_key, private=True) == new_signing and public_keys(sa_pub) == new_signing + old_signing
    theirs = copy_node(node, str(tmp_path / "theirs"))  # kubeadm's own renewal now signs with the new CA
    kubeadm_run(kubeadm, theirs["dir"], "certs", "renew", "apiserver-kubelet-client", "--config", theirs["config"])
    assert verify(pems(os.path.join(theirs["dir"], "pki", "apiserver-kubelet-client.crt"))[0], new["ca"], tmp_path)

    # finalize
    run_phase(node, tmp_path, state, "finalize")
    for name, path in CA_FILES.items():
        assert pems(os.path.join(node["dir"], path)) == [new[name]], name
    for conf in KUBECONFIGS + ("kubelet.conf",):
        assert kubeconfig_parts(node, conf)[0] == [new["ca"]], conf
    for name, base in FILES.items():
        chain = pems(os.path.join(node["dir"], base + ".crt"))
        assert len(chain) == 1 and verify(chain[0], new[CA_OF[name]], tmp_path), name
        assert not verify(chain[0], old[CA_OF[name]][0], tmp_path), name
    assert kcm_flags(node) == {"--client-ca-file": "/etc/kubernetes/pki/ca.crt",
                               "--cluster-signing-cert-file": "/etc/kubernetes/pki/ca.crt",
                               "--cluster-signing-key-file": "/etc/kubernetes/pki/ca.key"}
    assert not os.path.exists(os.path.join(node["dir"], "pki", "ca-next.crt"))
    assert not os.path.exists(os.path.join(node["dir"], "pki", "ca-next.key"))
    assert public_keys(sa_key, private=True) == new_signing and public_keys(sa_pub) == new_signing
    rc, status = step(node, tmp_path, state, "status")
    assert rc == 0 and status["done"] == ["prepare", "promote", "finalize"], status
    rc, refused = step(node, tmp_path, state, "apply", "prepare")
    assert rc != 0 and "roll it back" in refused["msg"], refused


def test_rollback_of_each_phase_restores_every_file(kubeadm, cp1, tmp_path):
    node = node_with_manifests(kubeadm, cp1, str(tmp_path / "node"))
    state = str(tmp_path / "state")
    assert step(node, tmp_path, state, "stage")[0] == 0
    for phase in ("prepare", "promote", "finalize"):
        before = snapshot(node["dir"])
        run_phase(node, tmp_path, state, phase)
        assert snapshot(node["dir"]) != before
        rc, planned = step(node, tmp_path, state, "rollback", phase, check=True)
        assert rc == 0 and planned["changed"] and snapshot(node["dir"]) != before, planned
        rc, rolled = step(node, tmp_path, state, "rollback", phase)
        assert rc == 0 and rolled["changed"] and phase not in rolled["done"], rolled
        assert snapshot(node["dir"]) == before, phase
        rc, again = step(node, tmp_path, state, "rollback", phase)
        assert rc == 0 and not again["changed"], again
        run_phase(node, tmp_path, state, phase)  # and forward again, to roll back the next phase


def fill(directory):
    """Fill the file system of directory (dd until ENOSPC); the filler's path."""
    import subprocess  # pylint: disable=import-outside-toplevel

    filler = os.path.join(directory, "filler")
    subprocess.run(["dd", "if=/dev/zero", "of=" + filler, "bs=4k"], capture_output=True, check=False)
    return filler


def leftovers(directory):
    return [os.path.join(r, f) for r, _d, fs in os.walk(directory) for f in fs if f.endswith(".tmp")]


def test_full_state_dir_fails_cleanly_and_converges_with_room(kubeadm, cp1, tmp_path):
    import subprocess  # pylint: disable=import-outside-toplevel

    node = node_with_manifests(kubeadm, cp1, str(tmp_path / "node"))
    state = str(tmp_path / "state")
    os.makedirs(state)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "kubepki-full", state], check=True)
    try:
        before = snapshot(node["dir"])
        filler = fill(state)
        rc, failed = step(node, tmp_path, state, "stage")
        assert rc != 0 and "No space left on device" in failed["msg"], failed
        assert leftovers(state) == [] and snapshot(node["dir"]) == before
        os.unlink(filler)
        rc, staged = step(node, tmp_path, state, "stage")
        assert rc == 0 and staged["changed"], staged

        filler = fill(state)  # the phase's backups land in the state dir: nothing live may change before they exist
        rc, failed = step(node, tmp_path, state, "apply", "prepare")
        assert rc != 0 and "No space left on device" in failed["msg"], failed
        assert leftovers(state) == [] and snapshot(node["dir"]) == before
        os.unlink(filler)
        run_phase(node, tmp_path, state, "prepare")
        rc, rolled = step(node, tmp_path, state, "rollback", "prepare")
        assert rc == 0 and rolled["changed"] and snapshot(node["dir"]) == before, rolled
    finally:
        subprocess.run(["umount", state], check=False)
