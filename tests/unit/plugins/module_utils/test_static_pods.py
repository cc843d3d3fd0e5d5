# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""static_pods: which static pods run on replaced files, the manifest annotation, the wait for the new process.

Processes are real (a symlink named like the component to /bin/sleep, found through the real /proc); manifests are
judged with PyYAML; a small stand-in kubelet thread restarts the process when its manifest changes."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
import yaml

from ansible_collections.kubepki.certs.plugins.module_utils._pki import static_pods
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError

MANIFEST = """apiVersion: v1
kind: Pod
metadata:
{annotations}  labels:
    component: {name}
  name: {name}
  namespace: kube-system
spec:
  containers:
  - command:
    - {name}
    - --tls-cert-file={cert}
    - --kubeconfig={kubeconfig}
    - --secure-port=6443
    name: {name}
    ports:
    - containerPort: 6443
      name: probe-port
    livenessProbe:
      httpGet:
        host: 10.0.0.1
        path: /livez
        port: probe-port
        scheme: HTTPS
    readinessProbe:
      httpGet:
        host: 10.0.0.1
        path: /readyz
        port: 6443
        scheme: HTTPS
  hostNetwork: true
"""


@pytest.fixture()
def pod(tmp_path):
    """A manifest for a fake component (its files under tmp_path) and a starter of its process."""
    name = "kube-fakeserver-%d" % os.getpid()
    binary = tmp_path / "bin" / name
    binary.parent.mkdir()
    os.symlink("/bin/sleep", str(binary))
    cert, kubeconfig = tmp_path / "server.crt", tmp_path / "fake.conf"
    cert.write_text("cert")
    kubeconfig.write_text("kubeconfig")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    path = manifests / (name + ".yaml")
    path.write_text(MANIFEST.format(name=name, cert=cert, kubeconfig=kubeconfig, annotations=""))
    processes = []

    def start():
        # files written within the start-time uncertainty of the start are judged "changed" (the safe side); start
        # clearly after them so the test is about ordering, not the clock's resolution
        time.sleep(3 * static_pods.START_TIME_UNCERTAINTY)
        processes.append(subprocess.Popen([str(binary), "300"]))  # pylint: disable=consider-using-with
        deadline = time.monotonic() + 5
        while not static_pods.pod_processes(name) and time.monotonic() < deadline:
            time.sleep(0.02)
        return processes[-1]

    info = {"name": name, "manifests": str(manifests), "path": str(path), "cert": str(cert), "start": start,
            "processes": processes}
    yield info
    for process in processes:
        process.kill()
        process.wait()


def _touch_later(path):
    time.sleep(2 * static_pods.START_TIME_UNCERTAINTY)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n")


def test_annotation_added_kept_and_replaced_yaml_judged(tmp_path):
    plain = MANIFEST.format(name="kube-apiserver", cert="/c", kubeconfig="/k", annotations="")
    annotated = MANIFEST.format(name="kube-apiserver", cert="/c", kubeconfig="/k",
                                annotations="  annotations:\n    kubeadm.kubernetes.io/x: y\n")
    for text in (plain, annotated):
        once = static_pods.annotate(text, "2026-12-03T10:00:00Z", "m.yaml")
        twice = static_pods.annotate(once, "2026-12-04T10:00:00Z", "m.yaml")
        before, after = yaml.safe_load(text), yaml.safe_load(twice)
        expected = dict(before["metadata"].get("annotations") or {}, **{"kubepki.io/restartedAt": "2026-12-04T10:00:00Z"})
        assert after["metadata"]["annotations"] == expected
        after["metadata"].pop("annotations")
        before["metadata"].pop("annotations", None)
        assert after == before
    with pytest.raises(InvalidInputError):
        static_pods.annotate('{"kind": "Pod"}', "t", "flow.yaml")


def test_probe_inputs_and_named_ports():
    container = yaml.safe_load(MANIFEST.format(name="x", cert="/etc/kubernetes/pki/apiserver.crt",
                                               kubeconfig="/etc/kubernetes/x.conf", annotations=""))["spec"]["containers"][0]
    assert static_pods.probe_of(container).url == "https://10.0.0.1:6443/readyz"
    container.pop("readinessProbe")
    assert static_pods.probe_of(container).url == "https://10.0.0.1:6443/livez"
    assert static_pods.pod_inputs(container) == ["/etc/kubernetes/pki/apiserver.crt", "/etc/kubernetes/x.conf"]


def test_pod_started_after_its_files_is_current(pod):
    pod["start"]()
    restart = static_pods.plan_restart(pod["manifests"], pod["name"])
    assert restart.status == static_pods.CURRENT, restart.reason


def test_file_written_after_the_start_makes_it_stale_naming_the_file(pod):
    pod["start"]()
    _touch_later(pod["cert"])
    restart = static_pods.plan_restart(pod["manifests"], pod["name"])
    assert restart.status == static_pods.RESTART
    assert pod["cert"] in restart.reason and pod["path"] not in restart.reason


def test_file_written_within_the_clock_uncertainty_of_the_start_is_judged_changed(pod):
    started = static_pods.process_start(pod["start"]().pid)
    written = started - static_pods.START_TIME_UNCERTAINTY / 2
    os.utime(pod["cert"], (written, written))
    restart = static_pods.plan_restart(pod["manifests"], pod["name"])
    assert restart.status == static_pods.RESTART and pod["cert"] in restart.reason


def test_a_pod_the_kubelet_is_restarting_is_waited_for(pod):
    """No process at planning time (the kubelet between stopping the old and starting the new one): none within
    appear_timeout fails; one that appears within it is judged."""
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="waited 1 s"):
        static_pods.plan_restart(pod["manifests"], pod["name"], appear_timeout=1)
    assert 1 <= time.monotonic() - started < 10
    starter = threading.Timer(1.0, pod["start"])
    starter.start()
    try:
        restart = static_pods.plan_restart(pod["manifests"], pod["name"], appear_timeout=20)
    finally:
        starter.join()
    assert restart.status == static_pods.CURRENT and restart.old_pids, restart


def test_manifest_without_process_fails_and_absent_manifest_is_reported(pod):
    with pytest.raises(InvalidInputError, match="no %s process" % pod["name"]):
        static_pods.plan_restart(pod["manifests"], pod["name"])
    assert static_pods.plan_restart(pod["manifests"], "etcd").status == static_pods.ABSENT


def _kubelet(pod, stop):
    """Stand-in kubelet: when the manifest changes, stop the pod's process and start a new one."""
    seen = os.stat(pod["path"]).st_mtime_ns
    while not stop.is_set():
        current = os.stat(pod["path"]).st_mtime_ns
        if current != seen:
            seen = current
            pod["processes"][-1].terminate()
            pod["processes"][-1].wait()
            pod["start"]()
        time.sleep(0.05)


def test_apply_restarts_through_the_manifest_and_waits_for_the_new_process(pod, tmp_path, monkeypatch):
    old = pod["start"]()
    _touch_later(pod["cert"])
    restarts = static_pods.plan_restarts(pod["manifests"], [pod["name"]])
    monkeypatch.setattr(restarts[0], "probe", None)  # no server behind the fake: the process is the verdict
    stop = threading.Event()
    kubelet = threading.Thread(target=_kubelet, args=(pod, stop))
    kubelet.start()
    try:
        copies = static_pods.apply_restarts(restarts, backup_root=str(tmp_path / "backup"), timeout=20)
    finally:
        stop.set()
        kubelet.join()
    assert restarts[0].new_pid == pod["processes"][-1].pid != old.pid
    assert old.poll() is not None
    with open(pod["path"], encoding="utf-8") as handle:
        assert "kubepki.io/restartedAt" in yaml.safe_load(handle)["metadata"]["annotations"]
    assert len(copies) == 1 and "kubepki.io" not in open(copies[0], encoding="utf-8").read()
    again = static_pods.plan_restart(pod["manifests"], pod["name"])
    assert again.status == static_pods.CURRENT, again.reason


def test_pod_that_does_not_come_back_times_out_naming_it(pod, tmp_path):
    pod["start"]()
    restarts = static_pods.plan_restarts(pod["manifests"], [pod["name"]], force=True)
    restarts[0].probe = None
    with pytest.raises(static_pods.RestartTimeout, match="%s did not come back within 1 s" % pod["name"]):
        static_pods.apply_restarts(restarts, backup_root=str(tmp_path / "backup"), timeout=1)
