# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/rotate_certs_rke1.yml and restore_rke1_state.yml (role rke1_rotate) with the real ansible-playbook against
three SSH hosts of the network-namespace lab, the rke double (tests/rke1/rke_double.py) as the rke command.

One story, in order (each test builds on the previous one): ``rke up`` by the double; the playbook refusing a missing
state file, a foreign state file, an old rke and an unreachable node; check mode; a rotation of every service; of
kube-apiserver only (privilege escalation on the nodes); the refusal of nodes that disagree with the state file and
the resumed rotation that rke had stopped after writing it; the refusal of an expired kube-ca without
rke1_rotate_rotate_ca; the CA rotation; the restore playbook. Verdicts: openssl on the hosts' files (``verify
-x509_strict`` against the CAs of cluster.rkestate, SHA-256 fingerprints), SHA-256 of every file on the workstation
and the nodes, the double's restart logs, and ansible-playbook's exit code and messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from rke1_fixtures import expired_ca, openssl_fingerprint, openssl_verifies
from test_rke_double_lab import ROLES, STALE_TOKEN_KEY, assert_chain_to_state_ca, fingerprints, restart_log, rke1_lab

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTION = os.path.dirname(os.path.dirname(HERE))
DOUBLE = os.path.join(HERE, "rke_double.py")
LAB_NAME, LAB_SUBNET = "krkp", "10.128.0.0/24"
NODES_GROUP = "k3s_cluster"  # the lab's group of all hosts (k3s flavour: servers + agents)
PLAYBOOK_TIMEOUT = 300


def collections_path():
    """The directory holding ansible_collections/kubepki/certs (the staged copy the tests run from)."""
    parts = COLLECTION.split(os.sep)
    assert parts[-3:] == ["ansible_collections", "kubepki", "certs"], "run from a staged copy (scripts/stage.sh): %s" % COLLECTION
    return os.sep.join(parts[:-3])


@pytest.fixture(scope="module")
def lab():
    with rke1_lab("krkp-", LAB_NAME, LAB_SUBNET) as made:
        env = dict(os.environ, KUBEPKI_RKE1_GENERATOR=made["generator"])
        result = subprocess.run([sys.executable, DOUBLE, "up", "--config", made["config"]], capture_output=True, text=True,
                                check=False, env=env, cwd=made["workstation"], timeout=300)
        assert result.returncode == 0, result.stderr
        yield dict(made, backups=os.path.join(made["workstation"], "backups"), log_dir=made["base"], runs=0,
                   snapshots={"up": None})


def playbook(lab, name, *args, inventory=None):
    """ansible-playbook <name> (a top-level wrapper) from the collection root against the lab; (rc, output)."""
    extra = {"rke1_rotate_cluster_yml": lab["config"], "rke1_rotate_rke_command": [sys.executable, DOUBLE],
             "rke1_rotate_nodes_group": NODES_GROUP, "rke1_rotate_node_become": False,
             "rke1_rotate_backup_dir": lab["backups"]}
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), KUBEPKI_RKE1_GENERATOR=lab["generator"],
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="False")
    env.pop("ANSIBLE_CONFIG", None)
    ansible_playbook = shutil.which("ansible-playbook") or os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    cmd = [ansible_playbook, "-i", inventory or lab["state"]["inventory"], name, "-e", json.dumps(extra)] + list(args)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=COLLECTION, env=env, timeout=PLAYBOOK_TIMEOUT)
    output = result.stdout + result.stderr
    lab["runs"] += 1
    with open(os.path.join(lab["log_dir"], "%02d-%s.log" % (lab["runs"], name)), "w", encoding="utf-8") as handle:
        handle.write("$ %s\n(rc %d)\n%s" % (" ".join(cmd), result.returncode, output))
    assert "PRIVATE KEY" not in output and "keyPEM" not in output, "key material in the playbook's output"
    return result.returncode, output


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def tree_digest(lab):
    """SHA-256 and mode of every file on the workstation (backups included) and in every node's /etc/kubernetes and
    restart log directory: what a refused run or a check-mode run must leave alone."""
    digests = {}
    roots = [lab["workstation"]]
    for host in lab["hosts"].values():
        roots += [os.path.join(host["root"], "root", "etc", "kubernetes"), os.path.join(host["root"], "root", "var", "log", "kubepki-lab")]
    for root in roots:
        for directory, _dirs, files in os.walk(root):
            digests[directory] = oct(os.stat(directory).st_mode)
            for entry in files:
                path = os.path.join(directory, entry)
                digests[path] = (sha256(path), oct(os.stat(path).st_mode))
    assert len(digests) > 3 * 20
    return digests


def backups(lab):
    return sorted(os.listdir(lab["backups"])) if os.path.isdir(lab["backups"]) else []


def reissued(output):
    """The names the role's summary lists as re-issued (its debug line)."""
    lines = [line for line in output.splitlines() if "certificates re-issued: " in line]
    assert len(lines) == 1, output[-3000:]
    return lines[0].split("certificates re-issued: ", 1)[1].strip().rstrip(",").strip('"').split(", ")


def test_01_missing_state_file_is_refused_before_anything_runs(lab):
    lab["snapshots"]["up"] = fingerprints(lab)
    moved = lab["rkestate"] + ".away"
    os.rename(lab["rkestate"], moved)
    try:
        before = tree_digest(lab)
        rc, output = playbook(lab, "rotate-certs-rke1.yml")
        assert rc != 0
        assert "missing: %s" % lab["rkestate"] in output and "restore_rke1_state.yml" in output, output[-3000:]
        assert "Run rke cert rotate" not in output  # the task never started
        assert tree_digest(lab) == before
    finally:
        os.rename(moved, lab["rkestate"])


def test_01b_foreign_state_file_and_old_rke_are_refused_before_anything_runs(lab, tmp_path):
    # A cluster.yml with one node less next to this cluster's state file: the state belongs to another cluster.
    with open(lab["config"], encoding="utf-8") as handle:
        config = handle.read()
    other = tmp_path / "other"
    other.mkdir()
    (other / "cluster.yml").write_text(config.split("  - address:")[0] + "  - address:" + "  - address:".join(config.split("  - address:")[1:3]),
                                       encoding="utf-8")
    shutil.copy(lab["rkestate"], str(other / "cluster.rkestate"))
    before = tree_digest(lab)
    rc, output = playbook(lab, "rotate-certs-rke1.yml", "-e", json.dumps({"rke1_rotate_cluster_yml": str(other / "cluster.yml")}))
    assert rc != 0
    assert "%s belongs to another cluster" % (other / "cluster.rkestate") in output, output[-3000:]
    assert "Run rke cert rotate" not in output
    # An rke without `cert rotate` (v0.1.x).
    old_rke = [sys.executable, "-c", "print('rke version v0.1.18')"]
    rc, output = playbook(lab, "rotate-certs-rke1.yml", "-e", json.dumps({"rke1_rotate_rke_command": old_rke}))
    assert rc != 0
    assert "needs rke v0.2.0 or later" in output and "v0.1.18" in output, output[-3000:]
    assert "Run rke cert rotate" not in output
    assert tree_digest(lab) == before
    assert sorted(os.listdir(str(other))) == ["cluster.rkestate", "cluster.yml"]


def test_01c_unreachable_node_is_refused_before_anything_runs(lab, tmp_path):
    # server3 answers no SSH: the same inventory with its port pointing nowhere (no shared connection either).
    with open(lab["state"]["inventory"], encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    unreachable = [line + " ansible_port=9 ansible_ssh_common_args='-o ControlMaster=no -o ControlPath=none -o ConnectTimeout=5'"
                   if line.startswith("server3 ") else line for line in lines]
    assert unreachable != lines
    inventory = str(tmp_path / "inventory.ini")
    with open(inventory, "w", encoding="utf-8") as handle:
        handle.write("\n".join(unreachable) + "\n")
    before = tree_digest(lab)
    rc, output = playbook(lab, "rotate-certs-rke1.yml", inventory=inventory)
    assert rc != 0
    assert "nodes not reachable: server3." in output and "fix SSH access" in output, output[-3000:]
    assert "Run rke cert rotate" not in output
    assert tree_digest(lab) == before


def test_02_check_mode_changes_nothing(lab):
    before = tree_digest(lab)
    rc, output = playbook(lab, "rotate-certs-rke1.yml", "--check")
    assert rc == 0, output[-3000:]
    assert "Check mode, nothing changes. Would run in %s: %s %s cert rotate --config %s" % (
        lab["workstation"], sys.executable, DOUBLE, lab["config"]) in output, output[-3000:]
    assert tree_digest(lab) == before
    assert backups(lab) == []


def check_backup(lab, previous_state_sha):
    """The newest backup directory: 0700, its state file (0600) the bytes the state file had before the run."""
    newest = os.path.join(lab["backups"], backups(lab)[-1])
    assert os.stat(newest).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(newest, "cluster.rkestate")).st_mode & 0o777 == 0o600
    assert sha256(os.path.join(newest, "cluster.rkestate")) == previous_state_sha
    assert os.path.exists(os.path.join(newest, "kube_config_cluster.yml"))
    return newest


def test_03_rotate_all_services(lab, tmp_path):
    before, state_sha, log_before = lab["snapshots"]["up"], sha256(lab["rkestate"]), restart_log(lab)
    rc, output = playbook(lab, "rotate-certs-rke1.yml")
    assert rc == 0, output[-4000:]
    assert "verified on 3 nodes" in output
    names = reissued(output)
    assert {"kube-apiserver", "kube-node", "kube-proxy"} <= set(names) and "kube-ca" not in names, names
    assert_chain_to_state_ca(lab, tmp_path)
    after = fingerprints(lab)
    for name, roles in ROLES.items():
        assert after[name]["kube-ca"] == before[name]["kube-ca"]
        for cert in ("kube-node", "kube-proxy") + (("kube-apiserver",) if "controlplane" in roles else ()):
            assert after[name][cert] != before[name][cert], "%s: %s not rotated" % (name, cert)
    assert restart_log(lab) != log_before  # the double (rke) ran and restarted containers
    check_backup(lab, state_sha)
    lab["snapshots"]["all"] = after


def test_04_rotate_one_service(lab, tmp_path):
    before, state_sha = lab["snapshots"]["all"], sha256(lab["rkestate"])
    # With privilege escalation on the nodes, as the role's default (su: the lab hosts have no sudo).
    rc, output = playbook(lab, "rotate-certs-rke1.yml", "-e", '{"rke1_rotate_services": ["kube-apiserver"], "rke1_rotate_node_become": true}',
                          "-e", "ansible_become_method=su")
    assert rc == 0, output[-4000:]
    assert "cert rotate --service kube-apiserver --config" in output
    assert reissued(output) == ["kube-apiserver"]
    assert_chain_to_state_ca(lab, tmp_path)
    after = fingerprints(lab)
    for name, roles in ROLES.items():
        changed = sorted(cert for cert in after[name] if after[name][cert] != before[name].get(cert))
        assert changed == (["kube-apiserver"] if "controlplane" in roles else []), "%s: %s" % (name, changed)
    check_backup(lab, state_sha)
    lab["snapshots"]["one"] = after


def test_04b_nodes_disagreeing_with_the_state_file_are_refused_unless_resuming(lab, tmp_path):
    # rke's own rotation writes the new state, then stops before any node gets a file: a rotation interrupted after
    # rke wrote cluster.rkestate. Every node now holds other certificates than the state file deploys to it.
    before_nodes, state_sha = fingerprints(lab), sha256(lab["rkestate"])
    result = subprocess.run([lab["generator"], "rotate", "-config", lab["config"], "-nodes", str(tmp_path / "never-deployed")],
                            capture_output=True, text=True, check=False, cwd=lab["workstation"], timeout=300)
    assert result.returncode == 0, result.stderr
    assert sha256(lab["rkestate"]) != state_sha and fingerprints(lab) == before_nodes
    before = tree_digest(lab)
    rc, output = playbook(lab, "rotate-certs-rke1.yml")
    assert rc != 0
    assert "nodes whose certificates disagree with %s: " % lab["rkestate"] in output, output[-3000:]
    for name in ROLES:
        assert "%s (" % name in output, (name, output[-3000:])
    assert "rke1_rotate_allow_stale_nodes=true" in output and "Run rke cert rotate" not in output
    assert tree_digest(lab) == before
    # Resuming: the same rotation again, allowed; rke deploys the state's certificates and every node is verified.
    rc, output = playbook(lab, "rotate-certs-rke1.yml", "-e", '{"rke1_rotate_allow_stale_nodes": true}')
    assert rc == 0, output[-4000:]
    assert "going on with nodes that disagree with the state file" in output and "verified on 3 nodes" in output
    assert_chain_to_state_ca(lab, tmp_path)
    after = fingerprints(lab)
    for name in ROLES:
        assert after[name]["kube-node"] != before_nodes[name]["kube-node"], name
    # Now nodes and state agree again: the next run needs no override (test_06 below runs without it).


def test_05_expired_ca_without_rotate_ca_is_refused_with_rkes_message(lab, tmp_path):
    ca_pem, key_pem = expired_ca(str(tmp_path / "expired"), "kube-ca")
    with open(lab["rkestate"], encoding="utf-8") as handle:
        document = json.load(handle)
    for section in ("currentState", "desiredState"):
        document[section]["certificatesBundle"]["kube-ca"].update(certificatePEM=ca_pem, keyPEM=key_pem)
    with open(lab["rkestate"], "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    # The nodes hold the same expired CA (a cluster whose CA ran out), so only the expiry is wrong.
    for host in lab["hosts"].values():
        ssl = os.path.join(host["root"], "root", "etc", "kubernetes", "ssl")
        for name, pem in (("kube-ca.pem", ca_pem), ("kube-ca-key.pem", key_pem)):
            if os.path.exists(os.path.join(ssl, name)):
                with open(os.path.join(ssl, name), "w", encoding="utf-8") as handle:
                    handle.write(pem)
    ca_file = str(tmp_path / "expired-ca.pem")
    with open(ca_file, "w", encoding="utf-8") as handle:
        handle.write(ca_pem)
    assert not openssl_verifies(ca_file, ca_file)  # openssl: the injected kube-ca has expired
    before = tree_digest(lab)
    rc, output = playbook(lab, "rotate-certs-rke1.yml")
    assert rc != 0
    assert "CA certificate is invalid, please use the --rotate-ca flag" in output and "rke1_rotate_rotate_ca=true" in output, output[-3000:]
    assert "Run rke cert rotate" not in output
    assert tree_digest(lab) == before
    lab["snapshots"]["expired_state_sha"] = sha256(lab["rkestate"])


def test_06_rotate_ca(lab, tmp_path):
    before = lab["snapshots"]["one"]
    # No Kubernetes API in this lab (test_rke1_rotate_ca_cluster_lab.py runs one): the cluster follow-up is off.
    rc, output = playbook(lab, "rotate-certs-rke1.yml", "-e", '{"rke1_rotate_rotate_ca": true, "rke1_rotate_cluster_follow_up": false}')
    assert rc == 0, output[-4000:]
    assert "cert rotate --rotate-ca --config" in output
    assert "rke1_rotate_cluster_follow_up is false: pods, service-account token Secrets" in output
    assert {"kube-ca", "kube-apiserver-requestheader-ca", "kube-node"} <= set(reissued(output))
    ca = assert_chain_to_state_ca(lab, tmp_path, skip=(STALE_TOKEN_KEY,))
    assert openssl_verifies(ca, ca)  # the new kube-ca is valid
    after = fingerprints(lab)
    for name in ROLES:
        assert after[name]["kube-ca"] != before[name]["kube-ca"]
        assert after[name]["kube-ca"] == openssl_fingerprint(ca)
    lab["snapshots"]["ca_backup"] = check_backup(lab, lab["snapshots"]["expired_state_sha"])


def test_07_restore_brings_back_the_previous_state_file(lab):
    rotated_sha, count = sha256(lab["rkestate"]), len(backups(lab))
    backup = lab["snapshots"]["ca_backup"]
    rc, output = playbook(lab, "restore-rke1-state.yml", "-e", json.dumps({"rke1_rotate_restore_from": backup}))
    assert rc == 0, output[-4000:]
    assert sha256(lab["rkestate"]) == lab["snapshots"]["expired_state_sha"]  # byte-equal to the state before rotate-ca
    assert sha256(lab["rkestate"]) == sha256(os.path.join(backup, "cluster.rkestate"))
    assert sha256(os.path.join(lab["workstation"], "kube_config_cluster.yml")) == sha256(os.path.join(backup, "kube_config_cluster.yml"))
    assert os.stat(lab["rkestate"]).st_mode & 0o777 == 0o600
    assert len(backups(lab)) == count + 1  # the rotated state was backed up first
    newest = os.path.join(lab["backups"], backups(lab)[-1])
    assert sha256(os.path.join(newest, "cluster.rkestate")) == rotated_sha
