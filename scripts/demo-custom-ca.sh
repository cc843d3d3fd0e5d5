#!/usr/bin/env bash
# The built-in demo: prepare the toolchain, create a custom CA set for two demo k3s data dirs,
# and print the fleet expiry report. Output goes to demo-output/ (or $KUBEPKI_DEMO_DIR).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KUBEPKI_DEMO_DIR="${KUBEPKI_DEMO_DIR:-${ROOT}/demo-output}"

bash "${ROOT}/scripts/bootstrap.sh" >/dev/null

# ansible-playbook finds the collection through a symlink tree (ignored by git).
COLLECTIONS="${ROOT}/.cache/collections"
mkdir -p "${COLLECTIONS}/ansible_collections/kubepki"
ln -sfn "${ROOT}" "${COLLECTIONS}/ansible_collections/kubepki/certs"

export ANSIBLE_COLLECTIONS_PATH="${COLLECTIONS}"
export ANSIBLE_LOCALHOST_WARNING=false
export ANSIBLE_DEPRECATION_WARNINGS=false
export ANSIBLE_NOCOLOR="${ANSIBLE_NOCOLOR:-${CI:-}}"

start=$(date +%s)
"${ROOT}/.venv/bin/ansible-playbook" -i "${ROOT}/demo/inventory.yml" "${ROOT}/demo/custom-ca.yml"
end=$(date +%s)

echo
echo "== Fleet expiry report (${KUBEPKI_DEMO_DIR}/report/fleet-expiry.md) =="
cat "${KUBEPKI_DEMO_DIR}/report/fleet-expiry.md"
echo
echo "Demo finished in $((end - start)) s. Files: ${KUBEPKI_DEMO_DIR}"
