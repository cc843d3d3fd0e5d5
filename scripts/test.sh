#!/usr/bin/env bash
# The kubepki.certs test command: bootstraps the toolchain, stages the checkout as
# ansible_collections/kubepki/certs in a temporary directory and runs every test suite there.
# Each step is timed; a failing step does not stop the run. Ends with a step table and a final
# "N passed, N failed" line; exits 1 if any step failed.
#
# Environment knobs:
#   KUBEPKI_STEP_TIMEOUT   per-command timeout in seconds (default 900)
#   KUBEPKI_KEEP_STAGE=1   keep the staged tree (path is printed) instead of deleting it
#   KUBEPKI_ALLOW_DESTRUCTIVE=0|1  pass --allow-destructive to ansible-test integration
#                          (default: 1 when CI is set, else 0)
#   KUBEPKI_SKIP_BOOTSTRAP=1  do not run scripts/bootstrap.sh (expects an existing .venv)

# The step_* functions and helpers are only called indirectly (through run_step and the EXIT trap).
# shellcheck disable=SC2317
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv"
PY_VERSION="3.11"
STEP_TIMEOUT="${KUBEPKI_STEP_TIMEOUT:-900}"
if [ -n "${CI:-}" ]; then
    ALLOW_DESTRUCTIVE="${KUBEPKI_ALLOW_DESTRUCTIVE:-1}"
else
    ALLOW_DESTRUCTIVE="${KUBEPKI_ALLOW_DESTRUCTIVE:-0}"
fi

export LC_ALL=C.UTF-8
export LANG=C.UTF-8
export PYTHONUNBUFFERED=1
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -t 1 ]; then
    # Plain logs: no ANSI colours from ansible-lint (rich), pytest, ansible.
    export NO_COLOR=1 ANSIBLE_NOCOLOR=1
fi
export VIRTUAL_ENV="${VENV}"
export PATH="${VENV}/bin:${PATH}"
# Debian's kubectl extracted by bootstrap.sh when none is installed (appended: an installed one wins).
KUBECTL_BIN="${ROOT}/.cache/kubernetes-client/usr/bin"
add_kubectl_path() {
    if [ -d "${KUBECTL_BIN}" ] && [[ ":${PATH}:" != *":${KUBECTL_BIN}:"* ]]; then
        export PATH="${PATH}:${KUBECTL_BIN}"
    fi
}
add_kubectl_path

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kubepki-test.XXXXXX")"
STAGE_ROOT="${WORK}/stage"
STATE="${WORK}/state"
mkdir -p "${STAGE_ROOT}" "${STATE}"
COLL=""

cleanup() {
    if [ "${KUBEPKI_KEEP_STAGE:-0}" = "1" ]; then
        echo "test.sh: staged tree kept at ${STAGE_ROOT}"
    else
        rm -rf "${WORK}"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

STEP_NAMES=()
STEP_STATUS=()
STEP_TIMES=()
STEP_NOTES=()

now_ms() { date +%s%3N; }

# Drop pip's harmless notices about unreachable extra file:// indexes.
filter_output() { sed -u "/WARNING: Location '.*' is ignored/d"; }

# note <text>: attach a remark (e.g. why a step was skipped) to the current step.
note() {
    printf '%s\n' "$*" > "${STATE}/note"
    printf 'test.sh: %s\n' "$*"
}

limit() { timeout -k 30 "${STEP_TIMEOUT}" "$@"; }

need_stage() {
    if [ -z "${COLL}" ] || [ ! -d "${COLL}" ]; then
        echo "test.sh: not run: the checkout was not staged" >&2
        return 1
    fi
    cd "${COLL}"
}

# run_step <name> <function>: run the function in a subshell with errexit, record time and result.
run_step() {
    local name="$1" fn="$2" start end rc status note_text
    rm -f "${STATE}/note"
    printf '\n==> [%s] %s\n' "$(( ${#STEP_NAMES[@]} + 1 ))" "${name}"
    start="$(now_ms)"
    ( set -e; "${fn}" ) </dev/null 2>&1 | filter_output
    rc="${PIPESTATUS[0]}"
    end="$(now_ms)"
    note_text=""
    if [ -f "${STATE}/note" ]; then
        note_text="$(head -n 1 "${STATE}/note")"
    fi
    if [ "${rc}" -eq 0 ]; then
        status="PASS"
    else
        status="FAIL"
        note_text="${note_text:+${note_text}; }rc=${rc}"
    fi
    STEP_NAMES+=("${name}")
    STEP_STATUS+=("${status}")
    STEP_TIMES+=("$(( end - start ))")
    STEP_NOTES+=("${note_text}")
    printf '<== %s: %s (%d.%01ds)\n' "${name}" "${status}" "$(( (end - start) / 1000 ))" "$(( (end - start) % 1000 / 100 ))"
}

# ---------------------------------------------------------------------------------------------------
step_bootstrap() {
    if [ "${KUBEPKI_SKIP_BOOTSTRAP:-0}" = "1" ]; then
        note "skipped (KUBEPKI_SKIP_BOOTSTRAP=1)"
        test -x "${VENV}/bin/ansible-test"
        return 0
    fi
    bash "${ROOT}/scripts/bootstrap.sh"
}

step_stage() {
    bash "${ROOT}/scripts/stage.sh" "${STAGE_ROOT}" > "${STATE}/coll"
    echo "staged: $(cat "${STATE}/coll")"
}

step_sanity() {
    need_stage
    limit ansible-test sanity --venv --python "${PY_VERSION}"
}

step_units() {
    need_stage
    if [ -z "$(find tests/unit \( -name 'test_*.py' -o -name '*_test.py' \) -print -quit 2>/dev/null)" ]; then
        note "skipped: no unit tests under tests/unit"
        return 0
    fi
    limit ansible-test units --venv --python "${PY_VERSION}"
}

step_integration() {
    need_stage
    local targets=()
    if [ -d tests/integration/targets ]; then
        mapfile -t targets < <(find tests/integration/targets -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
    fi
    if [ "${#targets[@]}" -eq 0 ]; then
        note "skipped: no targets under tests/integration/targets"
        return 0
    fi
    echo "integration targets: ${targets[*]}"
    local args=(--venv --python "${PY_VERSION}")
    if [ "${ALLOW_DESTRUCTIVE}" = "1" ]; then
        args+=(--allow-destructive)
    fi
    limit ansible-test integration "${args[@]}"
}

# pytest_suite <dir>: run a plain pytest suite against the staged collection.
pytest_suite() {
    local dir="$1" rc=0
    need_stage
    if [ ! -d "${dir}" ]; then
        note "skipped: ${dir} does not exist"
        return 0
    fi
    local has_tests
    has_tests="$(find "${dir}" \( -name 'test_*.py' -o -name '*_test.py' \) -print -quit)"
    PYTHONPATH="${STAGE_ROOT}${PYTHONPATH:+:${PYTHONPATH}}" \
    ANSIBLE_COLLECTIONS_PATH="${STAGE_ROOT}" \
        limit python -m pytest -p no:cacheprovider -ra "${dir}" || rc=$?
    if [ "${rc}" -eq 5 ] && [ -z "${has_tests}" ]; then
        note "no tests collected in ${dir} (no test files)"
        return 0
    fi
    return "${rc}"
}
step_pytest_interop() { pytest_suite tests/interop; }
step_pytest_lab() { pytest_suite tests/lab; }

# The engine must also work with the cryptography that Debian 12 nodes have (38.x, python3-cryptography).
step_units_debian_crypto() {
    need_stage
    local version
    version="$(/usr/bin/python3 -c 'import cryptography; print(cryptography.__version__)')" || return 1
    echo "Debian python3: $(/usr/bin/python3 --version), cryptography ${version}"
    PYTHONPATH="${STAGE_ROOT}" limit /usr/bin/python3 -m pytest -p no:cacheprovider -q tests/unit/plugins/module_utils
}
step_pytest_roles() { pytest_suite tests/roles; }

step_ansible_lint() {
    need_stage
    # --offline keeps ansible-lint from installing anything; the staged tree makes the collection's
    # own FQCNs (kubepki.certs.*) resolvable.
    ANSIBLE_COLLECTIONS_PATH="${STAGE_ROOT}" limit ansible-lint --offline
}

step_changelog_lint() {
    need_stage
    antsibull-changelog lint
}

step_docs_lint() {
    need_stage
    ANSIBLE_COLLECTIONS_PATH="${STAGE_ROOT}" limit antsibull-docs lint-collection-docs --plugin-docs .
}

step_build() {
    need_stage
    local out="${WORK}/build" tarball bad
    mkdir -p "${out}"
    ansible-galaxy collection build --output-path "${out}"
    tarball="$(find "${out}" -maxdepth 1 -name 'kubepki-certs-*.tar.gz' -print -quit)"
    test -n "${tarball}"
    echo "tarball: $(basename "${tarball}") ($(tar -tzf "${tarball}" | wc -l) entries, $(du -h "${tarball}" | cut -f1))"
    bad="$(tar -tzf "${tarball}" | sed 's|^\./||' \
        | grep -E '^(tests/output|\.venv|\.ansible|\.git|\.cache|collections/ansible_collections)(/|$)' || true)"
    if [ -n "${bad}" ]; then
        echo "tarball contains paths that must be excluded (galaxy.yml build_ignore):"
        printf '%s\n' "${bad}" | head -n 20
        return 1
    fi
    echo "tarball clean: no tests/output, .venv, .ansible, .git, .cache, collections/ansible_collections"
}

# ---------------------------------------------------------------------------------------------------
echo "test.sh: repository ${ROOT}"
run_step "bootstrap" step_bootstrap
add_kubectl_path
run_step "stage" step_stage
if [ -s "${STATE}/coll" ]; then
    COLL="$(cat "${STATE}/coll")"
fi
run_step "ansible-test sanity" step_sanity
run_step "ansible-test units" step_units
run_step "units on Debian cryptography" step_units_debian_crypto
run_step "ansible-test integration" step_integration
run_step "pytest tests/interop" step_pytest_interop
run_step "pytest tests/lab" step_pytest_lab
run_step "pytest tests/roles" step_pytest_roles
run_step "ansible-lint" step_ansible_lint
run_step "antsibull-changelog lint" step_changelog_lint
run_step "antsibull-docs lint" step_docs_lint
run_step "galaxy build" step_build

passed=0
failed=0
total_ms=0
printf '\n%-28s %9s  %-6s %s\n' "STEP" "TIME" "STATUS" "NOTE"
printf '%s\n' "--------------------------------------------------------------------------------"
for i in "${!STEP_NAMES[@]}"; do
    ms="${STEP_TIMES[$i]}"
    total_ms=$(( total_ms + ms ))
    printf '%-28s %7d.%01ds  %-6s %s\n' "${STEP_NAMES[$i]}" "$(( ms / 1000 ))" "$(( ms % 1000 / 100 ))" \
        "${STEP_STATUS[$i]}" "${STEP_NOTES[$i]}"
    if [ "${STEP_STATUS[$i]}" = "PASS" ]; then
        passed=$(( passed + 1 ))
    else
        failed=$(( failed + 1 ))
    fi
done
printf '%s\n' "--------------------------------------------------------------------------------"
printf '%-28s %7d.%01ds\n\n' "total" "$(( total_ms / 1000 ))" "$(( total_ms % 1000 / 100 ))"
echo "${passed} passed, ${failed} failed"
if [ "${failed}" -gt 0 ]; then
    exit 1
fi
exit 0
