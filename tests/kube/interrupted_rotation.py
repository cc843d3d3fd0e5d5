# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Interrupted kubeadm CA rotations on the kubeadm lab: each run starts playbooks/rotate_ca_kubeadm.yml for the next
phase, SIGKILLs ansible-playbook (its whole process group) at a random moment, SIGKILLs a random control-plane
component on a random control-plane node (the kubelet double restarts it), then reruns the phase without interruption,
which must converge: exit 0, the phase recorded on every node, every node Ready. Phases follow each other
(prepare, promote, finalize, then a new rotation id); the traffic probe runs throughout a rotation's prepare and promote
(clients holding only the old CA) and again through finalize (clients holding only the new CA), judged as in
test_kubeadm_ca_rotation: 0 certificate failures, 0 lost etcd writes, failed requests counted and bounded (a killed
apiserver costs its clients a failover).

    python3 tests/kube/interrupted_rotation.py --runs 10 [--seed N] [--dir DIR]

Prints one JSON line per run and a summary; exit 1 when any run did not converge or a probe was not clean.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import kubeadm_lab  # noqa: E402  pylint: disable=wrong-import-position
import test_kubeadm_ca_rotation as rotation  # noqa: E402  pylint: disable=wrong-import-position

PHASES = ("prepare", "promote", "finalize")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
# one probe spans two phases; per phase each of the 3 apiservers restarts at most twice (killed run, rerun) and one
# component is killed: 2 x (3 x 2 + 1) = 14 restarts, each worth up to two blips per client (503 while stopping, then
# the refused connection it fails over from)
PROBE_RESTARTS = 28


def playbook_argv(lab, phase, rotation_id):
    return [shutil.which("ansible-playbook") or "ansible-playbook", "-i", lab["inventory"], rotation.PLAYBOOK,
            "-e", '{"kubeadm_ca_rotation_kubelet_restart_command": []}', "-e", "kubeadm_ca_rotation_phase=" + phase,
            "-e", "kubeadm_ca_rotation_id=" + rotation_id]


def playbook_env():
    return dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
                ANSIBLE_DEPRECATION_WARNINGS="False", ANSIBLE_RETRY_FILES_ENABLED="False")


def killed_run(lab, phase, rotation_id, after, log_path):
    """Start the phase, SIGKILL its process group ``after`` seconds later (or let it finish first). Returns the rc
    (None when killed)."""
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(playbook_argv(lab, phase, rotation_id), stdout=log, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                                   env=playbook_env(), cwd=rotation.REPO, start_new_session=True)
        try:
            return process.wait(timeout=after)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None


def kill_component(lab, rng):
    """SIGKILL one running control-plane component on one control-plane node; (node, component, pid)."""
    host = rng.choice(kubeadm_lab.control_planes(lab))
    component = rng.choice(COMPONENTS)
    with open(kubeadm_lab.host_path(host, kubeadm_lab.DOUBLE_STATE + "/pods.json"), encoding="utf-8") as handle:
        pod = json.load(handle)["pods"].get(component, {})
    pids = [c["pid"] for c in pod.get("containers", {}).values() if c.get("pid")]
    if not pids:
        return host["name"], component, None
    try:
        os.kill(pids[0], signal.SIGKILL)
    except ProcessLookupError:
        return host["name"], component, None
    return host["name"], component, pids[0]


def recorded_everywhere(lab, rotation_id, phase):
    for host in lab["hosts"]:
        path = kubeadm_lab.host_path(host, "/var/lib/kubepki/%s/state.json" % rotation_id)
        if not os.path.exists(path):
            return False
        with open(path, encoding="utf-8") as handle:
            if phase not in json.load(handle).get("phases", {}):
                return False
    return True


def probe_material(lab, work, rotation_id, phase):
    """(old_ca, current_ca, cert, key, etcd_ca, etcd_cert, etcd_key) for the probe of this part of a rotation."""
    files = rotation.material(lab, os.path.join(work, "files"))
    cp1 = kubeadm_lab.control_planes(lab)[0]
    staged = kubeadm_lab.host_path(cp1, "/var/lib/kubepki/%s/staged/" % rotation_id)
    if phase == "finalize":
        new_ca = rotation.write(os.path.join(work, "new.crt"), rotation.pems(staged + "ca.crt")[0])
        new_etcd = rotation.write(os.path.join(work, "new-etcd.crt"), rotation.pems(staged + "etcd/ca.crt")[0])
        return new_ca, new_ca, files["admin.crt"], files["admin.key"], new_etcd, files["etcd.crt"], files["etcd.key"]
    old_ca = rotation.write(os.path.join(work, "old.crt"), rotation.pems(files["ca.crt"])[0])
    old_etcd = rotation.write(os.path.join(work, "old-etcd.crt"), rotation.pems(files["etcd-ca.crt"])[0])
    return old_ca, files["ca.crt"], files["admin.crt"], files["admin.key"], old_etcd, files["etcd.crt"], files["etcd.key"]


def start_probe(lab, out, material):
    old_ca, current_ca, cert, key, etcd_ca, etcd_cert, etcd_key = material
    result = subprocess.run([sys.executable, rotation.PROBE, "start", "--out", out, "--lab-state",
                             os.path.join(lab["base"], "state.json"), "--lab-port", "6443", "--lab-etcd-port", "2379",
                             "--path", "/version", "--old-ca", old_ca, "--current-ca-file", current_ca,
                             "--client-cert", cert, "--client-key", key, "--etcd-cacert", etcd_ca, "--etcd-cert", etcd_cert,
                             "--etcd-key", etcd_key, "--interval", "0.5", "--duration", "3000", "--restarts", str(PROBE_RESTARTS)],
                            capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0:
        raise RuntimeError("probe did not start: %s" % (result.stdout + result.stderr)[-2000:])


def probe_verdict(out):
    summary = rotation.stop_probe(out)
    kinds = summary["kinds"]
    figures = {kind: {k: kinds[kind].get(k) for k in ("ok", "fail", "failovers", "cert_failures")} for kind in kinds}
    figures["etcd_lost"] = kinds.get("etcd", {}).get("writes", {}).get("lost")
    figures["verdict"] = summary["verdict"]
    # as test_kubeadm_ca_rotation judges: 0 certificate failures, 0 lost writes, availability blips within --restarts
    clean = all(kinds[k]["cert_failures"] == 0 for k in kinds) and figures["etcd_lost"] == 0 and bool(summary["verdict"]["ok"])
    return clean, figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dir", help="lab directory (default: a new temporary one)")
    parser.add_argument("--kill-window", type=float, default=150.0, help="kill within this many seconds of the start")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    base = args.dir or tempfile.mkdtemp(prefix="kubepki-interrupted-")
    lab = kubeadm_lab.up(base, kubeadm_lab.build_binaries(), owner_pid=os.getpid())
    results, probes, ok = [], [], True
    try:
        rotation_number, phase_index, probe_out = 1, 0, None
        for run in range(1, args.runs + 1):
            rotation_id, phase = "interrupted-%d" % rotation_number, PHASES[phase_index]
            work = os.path.join(base, "run-%02d" % run)
            os.makedirs(work)
            if phase in ("prepare", "finalize"):
                if probe_out:
                    clean, figures = probe_verdict(probe_out)
                    probes.append({"until_run": run - 1, "clean": clean, "probe": figures})
                    ok = ok and clean
                if phase == "prepare":  # stage first, so the probe's material of the new CA exists for finalize later
                    subprocess.run(playbook_argv(lab, "stage", rotation_id), capture_output=True, env=playbook_env(),
                                   cwd=rotation.REPO, check=True, timeout=600)
                probe_out = os.path.join(work, "probe")
                start_probe(lab, probe_out, probe_material(lab, work, rotation_id, phase))
            after = round(rng.uniform(3.0, args.kill_window), 1)
            started = time.monotonic()
            first_rc = killed_run(lab, phase, rotation_id, after, os.path.join(work, "killed.log"))
            node, component, pid = kill_component(lab, rng)
            with open(os.path.join(work, "rerun.log"), "w", encoding="utf-8") as log:
                rerun = subprocess.run(playbook_argv(lab, phase, rotation_id), stdout=log, stderr=subprocess.STDOUT,
                                       env=playbook_env(), cwd=rotation.REPO, check=False, timeout=1800)
            converged = rerun.returncode == 0 and recorded_everywhere(lab, rotation_id, phase)
            try:
                kubeadm_lab.wait_ready(lab, 120)
                ready = True
            except Exception:  # pylint: disable=broad-except
                ready = False
            result = {"run": run, "rotation": rotation_id, "phase": phase, "killed_after_s": after,
                      "finished_before_kill": first_rc is not None, "component_killed": "%s on %s (pid %s)" % (component, node, pid),
                      "rerun_rc": rerun.returncode, "converged": converged and ready,
                      "seconds": round(time.monotonic() - started, 1)}
            print(json.dumps(result), flush=True)
            results.append(result)
            ok = ok and result["converged"]
            if not result["converged"]:
                break
            phase_index += 1
            if phase_index == len(PHASES):
                rotation_number, phase_index = rotation_number + 1, 0
        if probe_out:
            clean, figures = probe_verdict(probe_out)
            probes.append({"until_run": results[-1]["run"] if results else 0, "clean": clean, "probe": figures})
            ok = ok and clean
    finally:
        kubeadm_lab.kubepki_lab.down(base, log=lambda _msg: None)
    print(json.dumps({"seed": seed, "runs": len(results), "converged": sum(r["converged"] for r in results),
                      "probes": probes, "ok": ok}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
