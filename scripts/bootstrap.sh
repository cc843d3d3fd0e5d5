#!/usr/bin/env bash
# Idempotent bootstrap of the kubepki.certs test environment on Debian 12.
#  - installs the Debian packages the test suites need (apt-get update only when something is missing)
#  - makes kubectl available (preinstalled, or Debian's kubernetes-client extracted into .cache/)
#  - creates .venv from tests/requirements.txt (skipped when the requirements hash is unchanged)
#  - writes the offline get-pip stand-in that ansible-test --venv needs
# Usage: scripts/bootstrap.sh   (from anywhere; operates on the repository containing this script)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv"
REQS="${ROOT}/tests/requirements.txt"
STAMP="${VENV}/.requirements.sha256"
CACHE_DIR="${ROOT}/.cache"
PYTHON="${PYTHON:-python3}"

# etcd-client: etcdctl, the lab probe's etcd client (tests/lab/probe.py) and the interop tests'; golang-go: the Go
# x509 verifier of the interop tests and the lab probe's Go TLS client (tests/lab/tlsclient, built on first use);
# chromium: the headless browser that renders the HTML fleet report in tests/browser (driven over DevTools).
APT_PACKAGES=(etcd-server etcd-client nginx golang-go shellcheck openssh-server openssl iproute2 curl
              python3-cryptography python3-yaml python3-pytest chromium)

log() { printf 'bootstrap: %s\n' "$*"; }

# Drop pip's harmless notices about unreachable extra file:// indexes.
filter_pip() { sed -u "/WARNING: Location '.*' is ignored/d"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        log "need root for: $*" >&2
        return 1
    fi
}

pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

apt_updated=0
apt_update_once() {
    if [ "${apt_updated}" -eq 0 ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
}

# --- 1. Debian packages ------------------------------------------------------------------------
wanted=("${APT_PACKAGES[@]}")
# A bare Debian python3 cannot create venvs (ensurepip) without python3-venv.
if ! "${PYTHON}" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    wanted+=(python3-venv)
fi
missing=()
for pkg in "${wanted[@]}"; do
    pkg_installed "${pkg}" || missing+=("${pkg}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    log "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "Debian packages present: ${wanted[*]}"
fi

# --- 2. kubectl (never install kubernetes-client: it conflicts with a preinstalled kubectl) ------
KUBECTL_DIR="${CACHE_DIR}/kubernetes-client"
if command -v kubectl >/dev/null 2>&1; then
    log "kubectl present: $(command -v kubectl)"
elif [ -x "${KUBECTL_DIR}/usr/bin/kubectl" ]; then
    log "kubectl present: ${KUBECTL_DIR}/usr/bin/kubectl (add ${KUBECTL_DIR}/usr/bin to PATH)"
else
    if ! apt-cache show kubernetes-client >/dev/null 2>&1; then
        apt_update_once
    fi
    mkdir -p "${CACHE_DIR}/debs" "${KUBECTL_DIR}"
    log "extracting Debian kubernetes-client into ${KUBECTL_DIR}"
    (cd "${CACHE_DIR}/debs" && apt-get download -q -o APT::Sandbox::User=root kubernetes-client)
    for deb in "${CACHE_DIR}"/debs/kubernetes-client_*.deb; do
        dpkg-deb -x "${deb}" "${KUBECTL_DIR}"
    done
    log "kubectl extracted: ${KUBECTL_DIR}/usr/bin/kubectl (add ${KUBECTL_DIR}/usr/bin to PATH)"
fi

# --- 3. Python virtualenv with the pinned stack -----------------------------------------------
py_version="$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "${py_version}" != "3.11" ]; then
    log "WARNING: ${PYTHON} is Python ${py_version}; the pinned stack targets Python 3.11"
fi
want_hash="$( (cat "${REQS}"; echo "python=${py_version}") | sha256sum | cut -d' ' -f1)"
have_hash="$(cat "${STAMP}" 2>/dev/null || true)"
if [ -x "${VENV}/bin/python" ] && [ "${want_hash}" = "${have_hash}" ]; then
    log "venv up to date: ${VENV} (requirements hash ${want_hash:0:12})"
else
    if [ ! -x "${VENV}/bin/python" ]; then
        log "creating venv ${VENV} with ${PYTHON} (${py_version})"
        "${PYTHON}" -m venv "${VENV}"
    fi
    log "installing ${REQS} into ${VENV}"
    rm -f "${STAMP}"
    "${VENV}/bin/python" -m pip install -q --disable-pip-version-check -r "${REQS}" 2>&1 | filter_pip
    echo "${want_hash}" > "${STAMP}"
    log "venv ready (requirements hash ${want_hash:0:12})"
fi

# --- 4. Offline get-pip stand-in for ansible-test --venv ---------------------------------------
at_dir="$("${VENV}/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')"
pip_version="$(sed -n "s/.*pip='\([0-9][0-9.]*\)'.*/\1/p" "${at_dir}/_internal/python_requirements.py" | head -n 1)"
if [ -z "${pip_version}" ]; then
    log "ERROR: cannot determine the pip version ansible-test wants (${at_dir}/_internal/python_requirements.py)" >&2
    exit 1
fi
SHIM_DIR="${HOME}/.ansible/test/cache"
SHIM="${SHIM_DIR}/get_pip_${pip_version//./_}.py"
mkdir -p "${SHIM_DIR}"
shim_tmp="$(mktemp "${SHIM_DIR}/.get_pip.XXXXXX")"
cat > "${shim_tmp}" <<'PY'
"""Offline stand-in for get-pip.py used by ansible-test --venv bootstrap (written by scripts/bootstrap.sh).

Bootstraps pip from Python's bundled ensurepip wheel, then installs the pip version ansible-test asks for.
Output is shown only on failure.
"""
import subprocess
import sys


def run(cmd):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        sys.stdout.write(proc.stdout.decode('utf-8', 'replace'))
        sys.exit(proc.returncode)


args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
run([sys.executable, '-m', 'ensurepip', '--default-pip'])
run([sys.executable, '-m', 'pip', 'install', '-q', '--upgrade'] + args)
if '--no-setuptools' in sys.argv:
    run([sys.executable, '-m', 'pip', 'uninstall', '-y', '-q', 'setuptools'])
PY
if cmp -s "${shim_tmp}" "${SHIM}"; then
    rm -f "${shim_tmp}"
    log "get-pip shim up to date: ${SHIM} (pip ${pip_version})"
else
    mv -f "${shim_tmp}" "${SHIM}"
    log "wrote get-pip shim: ${SHIM} (pip ${pip_version})"
fi

log "done: $("${VENV}/bin/ansible" --version | sed -n 1p)"
