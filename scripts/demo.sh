#!/usr/bin/env bash
# The built-in demo, end to end on this machine (root needed: network namespaces):
#  1. a lab of 3 servers + 2 agents (network namespaces on a private bridge, one sshd each, reached over SSH)
#     running the k3s double with real etcd, bootstrapped with k3s's default self-signed CAs;
#  2. its state: Ready nodes, CA fingerprints per node, fleet expiry report;
#  3. rotate-ca.yml against it while a traffic probe keeps making TLS requests as an old and a current client;
#  4. the result: old and new CA fingerprints, probe failures, time taken. Then the lab is torn down
#     (KUBEPKI_DEMO_KEEP=1 keeps it; `python3 tests/lab/kubepki_lab.py down --dir demo-output/lab` removes it).
# Knobs: KUBEPKI_DEMO_SERVERS (3), KUBEPKI_DEMO_AGENTS (2), KUBEPKI_DEMO_DIR (demo-output).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_DIR="${KUBEPKI_DEMO_DIR:-${ROOT}/demo-output}"
LAB="${DEMO_DIR}/lab"
SERVERS="${KUBEPKI_DEMO_SERVERS:-3}"
AGENTS="${KUBEPKI_DEMO_AGENTS:-2}"
cd "${ROOT}"  # the repository's ansible.cfg (pipelining, forks) applies to every playbook run below

bash "${ROOT}/scripts/bootstrap.sh" >/dev/null

COLLECTIONS="${ROOT}/.cache/collections"
mkdir -p "${COLLECTIONS}/ansible_collections/kubepki"
ln -sfn "${ROOT}" "${COLLECTIONS}/ansible_collections/kubepki/certs"
export ANSIBLE_COLLECTIONS_PATH="${COLLECTIONS}"
export ANSIBLE_HOST_KEY_CHECKING=false ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_DEPRECATION_WARNINGS=false
export ANSIBLE_NOCOLOR="${ANSIBLE_NOCOLOR:-${CI:-}}"
PLAYBOOK="${ROOT}/.venv/bin/ansible-playbook"
PROBE="${ROOT}/tests/lab/probe.py"

cleanup() {
    python3 "${PROBE}" stop --out "${DEMO_DIR}/probe" >/dev/null 2>&1 || true
    if [ "${KUBEPKI_DEMO_KEEP:-0}" != "1" ]; then
        python3 "${ROOT}/tests/lab/kubepki_lab.py" down --dir "${LAB}" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

say() { printf '\n== %s ==\n' "$*"; }

say "1. Lab: ${SERVERS} servers + ${AGENTS} agents, k3s double with real etcd, default self-signed CAs"
mkdir -p "${DEMO_DIR}"
python3 "${ROOT}/tests/lab/kubepki_lab.py" down --dir "${LAB}" >/dev/null 2>&1 || true
rm -rf "${LAB}" "${DEMO_DIR}/probe"
python3 "${ROOT}/tests/lab/kubepki_lab.py" up --servers "${SERVERS}" --agents "${AGENTS}" --dir "${LAB}" \
    --name kpkdemo --subnet 10.123.230.0/24
python3 "${ROOT}/tests/lab/double/k3s_double.py" install --root / >/dev/null
"${PLAYBOOK}" -i "${LAB}/inventory.ini" "${ROOT}/tests/lab/playbooks/bootstrap_cluster.yml" -e "lab_dir=${LAB}" >/dev/null

say "2. Cluster state before the rotation"
"${PLAYBOOK}" -i "${LAB}/inventory.ini" "${ROOT}/tests/lab/playbooks/show_cluster.yml" -e "lab_dir=${LAB}" \
    | tee "${DEMO_DIR}/before.log" | grep -E '"(Ready nodes|server[0-9]+ \(|agent[0-9]+ \(|token CA)' | sort -u
sed -n '1,12p' "${LAB}/report/fleet-expiry.md"

say "3. rotate-ca.yml under live traffic (probe of real clients: Go TLS client with the pre-rotation CA and with the current CA, etcdctl)"
TLS="${LAB}/hosts/server1/root/var/lib/rancher/k3s/server/tls"
mkdir -p "${DEMO_DIR}/probe-ca"
cp "${TLS}/server-ca.crt" "${DEMO_DIR}/probe-ca/old.crt"
cp "${TLS}/server-ca.crt" "${DEMO_DIR}/probe-ca/current.crt"
cp "${TLS}/etcd/server-ca.crt" "${DEMO_DIR}/probe-ca/etcd-ca.crt"
cp "${TLS}/client-admin.crt" "${TLS}/client-admin.key" "${TLS}/etcd/client.crt" "${TLS}/etcd/client.key" "${DEMO_DIR}/probe-ca/"
python3 "${PROBE}" start --out "${DEMO_DIR}/probe" --lab-state "${LAB}/state.json" --lab-etcd-port 2379 \
    --old-ca "${DEMO_DIR}/probe-ca/old.crt" --current-ca-file "${DEMO_DIR}/probe-ca/current.crt" \
    --client-cert "${DEMO_DIR}/probe-ca/client-admin.crt" --client-key "${DEMO_DIR}/probe-ca/client-admin.key" \
    --etcd-cacert "${DEMO_DIR}/probe-ca/etcd-ca.crt" --etcd-cert "${DEMO_DIR}/probe-ca/client.crt" \
    --etcd-key "${DEMO_DIR}/probe-ca/client.key" --interval 0.5 --duration 900 --path /version --restarts "${SERVERS}" >/dev/null
start=$(date +%s)
# The plays as they start, progress lines during long waits, then the run summary (the run_summary callback that
# ansible.cfg enables): per node what changed and the restart, old -> new CA fingerprints, what is left, backups.
"${PLAYBOOK}" -i "${LAB}/inventory.ini" "${ROOT}/rotate-ca.yml" > "${DEMO_DIR}/rotate-ca.log" 2>&1 &
rotate_pid=$!
tail -n +1 -f --pid "${rotate_pid}" "${DEMO_DIR}/rotate-ca.log" \
    | sed -n -e '/^PLAY \[/p' -e '/^\.\.\. /p' -e '/KUBEPKI.CERTS RUN SUMMARY/,$p'
wait "${rotate_pid}" || { echo "rotate-ca.yml failed: see ${DEMO_DIR}/rotate-ca.log"; exit 1; }
end=$(date +%s)
cp "${TLS}/server-ca.crt" "${DEMO_DIR}/probe-ca/current.crt"
sleep 3
python3 "${PROBE}" stop --out "${DEMO_DIR}/probe" || true

say "4. Result"
"${PLAYBOOK}" -i "${LAB}/inventory.ini" "${ROOT}/tests/lab/playbooks/show_cluster.yml" -e "lab_dir=${LAB}" \
    > "${DEMO_DIR}/after.log"
echo "server CA per node (servers: fingerprint of server-ca; agents: the bundle they downloaded), before -> after:"
for log in before after; do
    grep -oE '"(server|agent)[0-9]+ \([a-z]+, [^)]*\): server-ca [^"]+' "${DEMO_DIR}/${log}.log" | sort -u \
        | sed -e "s/^\"/  ${log}: /"
done
grep -E '"Ready nodes' "${DEMO_DIR}/after.log" | sort -u
python3 - "${DEMO_DIR}/probe/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
for kind, totals in sorted(summary.get("kinds", {}).items()):
    writes = totals.get("writes")
    extra = " writes acked=%(acked)s lost=%(lost)s failed=%(failed)s unresolved=%(unresolved)s" % writes if writes else ""
    print("probe %-8s ok=%s fail=%s failovers=%s cert_failures=%s blips=%s%s" % (
        kind, totals.get("ok"), totals.get("fail"), totals.get("failovers", 0), totals.get("cert_failures"), totals.get("blips"), extra))
verdict = summary.get("verdict", {})
print("probe verdict: %s" % ("OK" if verdict.get("ok") else verdict.get("problems")))
PY
echo "rotate-ca.yml took $((end - start)) s. Logs and reports: ${DEMO_DIR}"
