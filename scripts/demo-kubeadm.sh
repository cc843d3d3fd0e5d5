#!/usr/bin/env bash
# The kubeadm demo, end to end on this machine (root needed: network namespaces; the first run builds the Kubernetes
# binaries from source, about 10 minutes):
#  1. the kubeadm lab: cp1..cp3 + worker1 running the REAL kube-apiserver, kube-controller-manager, kube-scheduler and
#     etcd (made by the real kubeadm; a kubelet double runs the static pods);
#  2. the expiry report of kubepki.certs beside kubeadm's own `certs check-expiration`, per certificate;
#  3. renew_kubeadm.yml (forced, one control-plane node at a time) while a traffic probe of real clients runs (the Go
#     TLS client failing over between the three apiservers, etcdctl over the three members);
#  4. the result: kubeadm's report after, the probe's verdict, the nodes. Then the lab is torn down
#     (KUBEPKI_DEMO_KEEP=1 keeps it; `python3 tests/kube/kubeadm_lab.py down --dir demo-output/kubeadm-lab` removes it).
# Knob: KUBEPKI_DEMO_DIR (demo-output).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_DIR="${KUBEPKI_DEMO_DIR:-${ROOT}/demo-output}"
LAB="${DEMO_DIR}/kubeadm-lab"
cd "${ROOT}"

bash "${ROOT}/scripts/bootstrap.sh" >/dev/null

COLLECTIONS="${ROOT}/.cache/collections"
mkdir -p "${COLLECTIONS}/ansible_collections/kubepki"
ln -sfn "${ROOT}" "${COLLECTIONS}/ansible_collections/kubepki/certs"
export ANSIBLE_COLLECTIONS_PATH="${COLLECTIONS}"
export ANSIBLE_HOST_KEY_CHECKING=false ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_DEPRECATION_WARNINGS=false
export ANSIBLE_NOCOLOR="${ANSIBLE_NOCOLOR:-${CI:-}}"
VENV_BIN="${ROOT}/.venv/bin"
PROBE="${ROOT}/tests/lab/probe.py"
KLAB="${ROOT}/tests/kube/kubeadm_lab.py"

cleanup() {
    python3 "${PROBE}" stop --out "${DEMO_DIR}/kubeadm-probe" >/dev/null 2>&1 || true
    if [ "${KUBEPKI_DEMO_KEEP:-0}" != "1" ]; then
        python3 "${KLAB}" down --dir "${LAB}" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

say() { printf '\n== %s ==\n' "$*"; }
on() { local host="$1"; shift; python3 "${KLAB}" exec --dir "${LAB}" --host "${host}" -- "$@"; }

say "1. kubeadm lab: 3 control-plane nodes + 1 worker, real Kubernetes binaries"
mkdir -p "${DEMO_DIR}"
python3 "${KLAB}" down --dir "${LAB}" >/dev/null 2>&1 || true
rm -rf "${LAB}" "${DEMO_DIR}/kubeadm-probe" "${DEMO_DIR}/kubeadm-expiry"
python3 "${KLAB}" up --dir "${LAB}"
BIN="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kubeadm"]["bin_dir"])' "${LAB}/state.json")"
on cp1 kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o wide

say "2. Expiry on cp1: kubepki.certs.cert_check beside kubeadm certs check-expiration"
ANSIBLE_LOAD_CALLBACK_PLUGINS=true ANSIBLE_CALLBACKS_ENABLED=ansible.builtin.tree ANSIBLE_CALLBACK_TREE_DIR="${DEMO_DIR}/kubeadm-expiry" \
    "${VENV_BIN}/ansible" -i "${LAB}/inventory.ini" cp1 -m kubepki.certs.cert_check \
    -a '{"distribution": "kubeadm", "kubeadm_output": true}' >/dev/null
on cp1 "${BIN}/kubeadm" certs check-expiration --config /etc/kubernetes/kubeadm-config.yaml -o json > "${DEMO_DIR}/kubeadm-expiry/kubeadm.json"
python3 - "${DEMO_DIR}/kubeadm-expiry" <<'PY'
import json, os, sys
ours = json.load(open(os.path.join(sys.argv[1], "cp1")))["kubeadm_expiration_info"]
theirs = json.load(open(os.path.join(sys.argv[1], "kubeadm.json")))
print("%-26s %-22s %-22s %-8s %s" % ("CERTIFICATE", "kubepki.certs", "kubeadm", "CA", "same"))
for section in ("certificates", "certificateAuthorities"):
    for a, b in zip(ours[section], theirs[section]):
        same = all(a.get(k) == b.get(k) for k in ("name", "expirationDate", "caName", "externallyManaged", "missing"))
        print("%-26s %-22s %-22s %-8s %s" % (a["name"], a.get("expirationDate") or "missing",
                                           b.get("expirationDate") or "missing", a.get("caName") or "-", "yes" if same else "NO"))
PY

say "3. renew_kubeadm.yml (forced), one control-plane node at a time, under a probe of real clients"
SNAP="${DEMO_DIR}/kubeadm-probe-files"
rm -rf "${SNAP}" && mkdir -p "${SNAP}" && chmod 700 "${SNAP}"
CP1="${LAB}/hosts/cp1/root/etc/kubernetes"
python3 - "${CP1}/admin.conf" "${SNAP}" <<'PY'
import base64, os, sys, yaml
user = yaml.safe_load(open(sys.argv[1]))["users"][0]["user"]
for name, field in (("admin.crt", "client-certificate-data"), ("admin.key", "client-key-data")):
    path = os.path.join(sys.argv[2], name)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        handle.write(base64.b64decode(user[field]))
PY
cp "${CP1}/pki/etcd/ca.crt" "${SNAP}/etcd-ca.crt"
cp "${CP1}/pki/apiserver-etcd-client.crt" "${CP1}/pki/apiserver-etcd-client.key" "${SNAP}/"
cp "${CP1}/pki/ca.crt" "${SNAP}/ca.crt"
python3 "${PROBE}" start --out "${DEMO_DIR}/kubeadm-probe" --lab-state "${LAB}/state.json" --lab-port 6443 \
    --lab-etcd-port 2379 --path /version --old-ca "${SNAP}/ca.crt" --current-ca-file "${SNAP}/ca.crt" \
    --client-cert "${SNAP}/admin.crt" --client-key "${SNAP}/admin.key" --etcd-cacert "${SNAP}/etcd-ca.crt" \
    --etcd-cert "${SNAP}/apiserver-etcd-client.crt" --etcd-key "${SNAP}/apiserver-etcd-client.key" \
    --interval 0.5 --duration 1200 --restarts 3 >/dev/null
started=$(date +%s)
"${VENV_BIN}/ansible-playbook" -i "${LAB}/inventory.ini" "${ROOT}/renew-kubeadm.yml" -e kubeadm_renew_force=true \
    | grep -E '"msg"|PLAY RECAP|ok=' || true
took=$(( $(date +%s) - started ))
python3 "${PROBE}" stop --out "${DEMO_DIR}/kubeadm-probe" --fail-on old,current,etcd || true

say "4. Result (renewal took ${took} s)"
on cp1 "${BIN}/kubeadm" certs check-expiration --config /etc/kubernetes/kubeadm-config.yaml
on cp2 kubectl --kubeconfig /root/.kube/config get nodes
