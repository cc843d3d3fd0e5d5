#!/usr/bin/env bash
# The kubepki.certs test command: bootstraps the toolchain, stages the checkout as
# ansible_collections/kubepki/certs in a temporary directory and runs every test suite there.
# Each step runs as its own process under its timeout (killed with all its children when it runs over)
# and is timed; a failing step does not stop the run. A step that cannot run says so: SKIP, which fails
# the run when CI is set unless the step declared why it cannot run there (skip_declared). Ends with a
# step table (status PASS/FAIL/SKIP, the step's test counts) and a final line counting TESTS, the sum of
# the runners' own counts (pytest and ansible-test units from their junit XML, ansible-test sanity and
# integration from their output); exits 1 if any step failed (or, with CI set, an undeclared SKIP).
#
# Environment knobs:
#   KUBEPKI_STEP_TIMEOUT   timeout of every step in seconds (default: each step's own, 300 to 3600)
#   KUBEPKI_KEEP_STAGE=1   keep the staged tree (path is printed) instead of deleting it
#   KUBEPKI_ALLOW_DESTRUCTIVE=0|1  pass --allow-destructive to ansible-test integration
#                          (default: 1 when CI is set, else 0)
#   KUBEPKI_SKIP_BOOTSTRAP=1  do not run scripts/bootstrap.sh (expects an existing .venv; a declared SKIP)
#
# Internal: "test.sh --step <function>" runs one step function (how run_step runs each step under timeout).

# The step_* functions and helpers are only called indirectly (through run_step and the EXIT trap).
# shellcheck disable=SC2317
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv"
PY_VERSION="3.11"
SELF="${ROOT}/scripts/test.sh"
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

if [ "${1:-}" = "--step" ]; then
    WORK="${KUBEPKI_TEST_WORK:?test.sh --step runs inside a test.sh run}"
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/kubepki-test.XXXXXX")"
fi
STAGE_ROOT="${WORK}/stage"
STATE="${WORK}/state"
RESULTS="${STATE}/results"
mkdir -p "${STAGE_ROOT}" "${STATE}" "${RESULTS}"
COLL=""
if [ -s "${STATE}/coll" ]; then
    COLL="$(cat "${STATE}/coll")"
fi

STEP_NAMES=()
STEP_STATUS=()
STEP_TIMES=()
STEP_NOTES=()
STEP_FAILS_RUN=()

now_ms() { date +%s%3N; }

# Drop pip's harmless notices about unreachable extra file:// indexes.
filter_output() { sed -u "/WARNING: Location '.*' is ignored/d"; }

# note <text>: attach a remark to the current step (shown in the step table).
note() {
    printf '%s\n' "$*" > "${STATE}/note"
    printf 'test.sh: %s\n' "$*"
}

# skip <reason>: the step did not run its tests. SKIP in the table; with CI set it fails the run.
skip() {
    printf '%s\n' "$*" > "${STATE}/skip"
    note "skipped: $*"
}

# skip_declared <why this step cannot run here>: a SKIP that CI accepts (the reason is printed).
skip_declared() {
    printf 'declared\n' > "${STATE}/skip_declared"
    skip "$*"
}

# record <kind> <args>: the test counts of the current step, as its runner reported them.
#   record junit <file>...                 pytest / ansible-test units junit XML
#   record counts <passed> <failed> <skipped>
record() {
    printf '%s\n' "$*" >> "${RESULTS}/${KUBEPKI_STEP_INDEX:-0}"
}

need_stage() {
    if [ -z "${COLL}" ] || [ ! -d "${COLL}" ]; then
        echo "test.sh: not run: the checkout was not staged" >&2
        return 1
    fi
    cd "${COLL}"
}

# run_step <name> <function> <timeout s>: the function as its own process ("test.sh --step", errexit on) under
# timeout, which kills the step's whole process group when it runs over; records time, status and counts.
run_step() {
    local name="$1" fn="$2" seconds="${KUBEPKI_STEP_TIMEOUT:-$3}" start end rc status note_text index fails_run=0
    index="$(( ${#STEP_NAMES[@]} + 1 ))"
    rm -f "${STATE}/note" "${STATE}/skip" "${STATE}/skip_declared" "${RESULTS}/${index}"
    printf '\n==> [%s] %s (timeout %ss)\n' "${index}" "${name}" "${seconds}"
    start="$(now_ms)"
    KUBEPKI_TEST_WORK="${WORK}" KUBEPKI_STEP_INDEX="${index}" \
        timeout -k 30 "${seconds}" bash "${SELF}" --step "${fn}" </dev/null 2>&1 | filter_output
    rc="${PIPESTATUS[0]}"
    end="$(now_ms)"
    note_text=""
    if [ -f "${STATE}/note" ]; then
        note_text="$(head -n 1 "${STATE}/note")"
    fi
    if [ "${rc}" -eq 124 ] || [ "${rc}" -eq 137 ]; then
        status="FAIL"
        fails_run=1
        note_text="${note_text:+${note_text}; }timed out after ${seconds}s (rc=${rc})"
    elif [ "${rc}" -ne 0 ]; then
        status="FAIL"
        fails_run=1
        note_text="${note_text:+${note_text}; }rc=${rc}"
    elif [ -f "${STATE}/skip" ]; then
        status="SKIP"
        if [ -n "${CI:-}" ] && [ ! -f "${STATE}/skip_declared" ]; then
            fails_run=1
            note_text="${note_text}; fails CI: the step did not declare why it cannot run here"
        fi
    else
        status="PASS"
    fi
    STEP_NAMES+=("${name}")
    STEP_STATUS+=("${status}")
    STEP_TIMES+=("$(( end - start ))")
    STEP_NOTES+=("${note_text}")
    STEP_FAILS_RUN+=("${fails_run}")
    printf '<== %s: %s (%d.%01ds)\n' "${name}" "${status}" "$(( (end - start) / 1000 ))" "$(( (end - start) % 1000 / 100 ))"
}

# tests_table: per step "<index> <passed> <failed> <skipped>" (or "<index> -"), then "total <p> <f> <s>", from the
# runners' own reports recorded by the steps (junit XML: <testsuite> tests/failures/errors/skipped).
tests_table() {
    "${PYTHON_FOR_REPORT}" - "${RESULTS}" "${#STEP_NAMES[@]}" <<'PY'
import os
import sys
import xml.etree.ElementTree as ET

results, steps = sys.argv[1], int(sys.argv[2])
total = [0, 0, 0]


def junit(path):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = [0, 0, 0]
    for suite in suites:
        tests = int(suite.get("tests", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        counts[0] += tests - failed - skipped
        counts[1] += failed
        counts[2] += skipped
    return counts


for index in range(1, steps + 1):
    path = os.path.join(results, str(index))
    if not os.path.exists(path):
        print(index, "-")
        continue
    counts = [0, 0, 0]
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            kind, *args = line.split()
            try:
                if kind == "junit":
                    for item in args:
                        counts = [a + b for a, b in zip(counts, junit(item))]
                elif kind == "counts":
                    counts = [a + int(b) for a, b in zip(counts, args)]
            except (OSError, ET.ParseError, ValueError) as exc:
                print("test.sh: cannot read the test counts %s: %s" % (line.strip(), exc), file=sys.stderr)
    total = [a + b for a, b in zip(total, counts)]
    print(index, *counts)
print("total", *total)
PY
}

# ---------------------------------------------------------------------------------------------------
step_bootstrap() {
    if [ "${KUBEPKI_SKIP_BOOTSTRAP:-0}" = "1" ]; then
        test -x "${VENV}/bin/ansible-test"
        skip_declared "KUBEPKI_SKIP_BOOTSTRAP=1: the caller provides the toolchain (${VENV})"
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
    local log="${STATE}/sanity.log" rc=0 ran failed skipped
    ansible-test sanity --venv --python "${PY_VERSION}" 2>&1 | tee "${log}" || rc=$?
    # ansible-test writes no report of passed sanity tests: count them from its output
    # (ansible-core 2.19: 'Running sanity test "pep8"', 'FATAL: The 2 sanity test(s) listed below (out of 6) failed.')
    ran="$(grep -cE "^Running sanity test [\"']" "${log}" || true)"
    skipped="$(grep -cE "^WARNING: Skipping sanity test [\"']" "${log}" || true)"
    failed="$(sed -nE 's/^(FATAL|ERROR): The ([0-9]+) sanity test\(s\) listed below \(out of [0-9]+\) failed.*/\2/p' "${log}" | tail -n 1)"
    failed="${failed:-0}"
    if [ "${rc}" -ne 0 ] && [ "${failed}" -eq 0 ]; then
        failed=1
    fi
    record counts "$(( ran - failed ))" "${failed}" "${skipped}"
    return "${rc}"
}

step_units() {
    need_stage
    if [ -z "$(find tests/unit \( -name 'test_*.py' -o -name '*_test.py' \) -print -quit 2>/dev/null)" ]; then
        skip "no unit tests under tests/unit"
        return 0
    fi
    rm -f tests/output/junit/python*-units.xml
    local rc=0 xml
    ansible-test units --venv --python "${PY_VERSION}" || rc=$?
    for xml in tests/output/junit/python*-units.xml; do
        if [ -f "${xml}" ]; then
            cp "${xml}" "${STATE}/units-$(basename "${xml}")"
            record junit "${STATE}/units-$(basename "${xml}")"
        fi
    done
    return "${rc}"
}

step_integration() {
    need_stage
    local targets=()
    if [ -d tests/integration/targets ]; then
        mapfile -t targets < <(find tests/integration/targets -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
    fi
    if [ "${#targets[@]}" -eq 0 ]; then
        skip "no targets under tests/integration/targets"
        return 0
    fi
    echo "integration targets: ${targets[*]}"
    local args=(--venv --python "${PY_VERSION}") log="${STATE}/integration.log" rc=0 ran
    if [ "${ALLOW_DESTRUCTIVE}" = "1" ]; then
        args+=(--allow-destructive)
    fi
    ansible-test integration "${args[@]}" 2>&1 | tee "${log}" || rc=$?
    # one test per target run (ansible-test stops at the first failing target)
    ran="$(grep -c "^Running .* integration test role$" "${log}" || true)"
    if [ "${rc}" -ne 0 ]; then
        record counts "$(( ran > 0 ? ran - 1 : 0 ))" 1 0
    else
        record counts "${ran}" 0 0
    fi
    return "${rc}"
}

# pytest_suite <dir>: run a plain pytest suite against the staged collection; counts from its junit XML.
pytest_suite() {
    local dir="$1" rc=0 xml
    need_stage
    if [ ! -d "${dir}" ]; then
        skip "${dir} does not exist"
        return 0
    fi
    xml="${STATE}/junit-$(printf '%s' "${dir}" | tr '/' '-').xml"
    PYTHONPATH="${STAGE_ROOT}${PYTHONPATH:+:${PYTHONPATH}}" \
    ANSIBLE_COLLECTIONS_PATH="${STAGE_ROOT}" \
        python -m pytest -p no:cacheprovider -ra --junitxml="${xml}" "${dir}" || rc=$?
    if [ "${rc}" -eq 5 ]; then
        skip "no tests collected in ${dir}"
        return 0
    fi
    if [ -f "${xml}" ]; then
        record junit "${xml}"
    fi
    return "${rc}"
}
step_pytest_interop() { pytest_suite tests/interop; }
step_pytest_lab() { pytest_suite tests/lab; }

# The engine must also work with the cryptography that Debian 12 nodes have (38.x, python3-cryptography).
step_units_debian_crypto() {
    need_stage
    local version rc=0 xml="${STATE}/junit-debian-crypto.xml"
    version="$(/usr/bin/python3 -c 'import cryptography; print(cryptography.__version__)')" || return 1
    echo "Debian python3: $(/usr/bin/python3 --version), cryptography ${version}"
    PYTHONPATH="${STAGE_ROOT}" /usr/bin/python3 -m pytest -p no:cacheprovider -q --junitxml="${xml}" tests/unit/plugins/module_utils || rc=$?
    if [ -f "${xml}" ]; then
        record junit "${xml}"
    fi
    return "${rc}"
}
step_pytest_roles() { pytest_suite tests/roles; }
# The HTML fleet report in headless Chromium (Debian's chromium from bootstrap.sh; a missing browser fails the test).
# Screenshots stay in the checkout's tests/output/browser (git-ignored).
step_pytest_browser() {
    export KUBEPKI_TEST_ARTIFACTS="${ROOT}/tests/output/browser"
    pytest_suite tests/browser
    echo "screenshots: ${KUBEPKI_TEST_ARTIFACTS}"
}

# kubeadm, kube-apiserver, kube-controller-manager, kube-scheduler built from k8s.io/kubernetes and etcd from
# go.etcd.io/etcd (tests/kube/build.sh; cached per version in the clone's .cache/kube, so only the first run on a
# machine builds; the build prints its time), then the tests judged by them, the kubeadm lab's included.
step_pytest_kube() {
    need_stage
    export KUBEPKI_KUBE_CACHE="${ROOT}/.cache/kube"
    bash "${COLL}/tests/kube/build.sh"
    pytest_suite tests/kube
}

# RKE1 fixtures written by rke's own Go packages (github.com/rancher/rke, pinned in tests/rke1/gen/go.mod; built by
# tests/rke1/build.sh, cached in the clone's .cache/rke1/<rke version>), then cert_check's RKE1 tests judged by
# openssl on them, and the rke CLI double (tests/rke1/rke_double.py) driving `rke up` / `rke cert rotate` against a
# three-host lab of tests/lab/kubepki_lab.py (root, openssh-server, openssl: scripts/bootstrap.sh installs them).
# The CA rotation's cluster side runs the real etcd, kube-apiserver and kube-controller-manager of tests/kube/build.sh
# (built by the kube step before; cached) as the lab's containers.
step_pytest_rke1() {
    need_stage
    export KUBEPKI_RKE1_CACHE="${ROOT}/.cache/rke1" KUBEPKI_KUBE_CACHE="${ROOT}/.cache/kube"
    bash "${COLL}/tests/rke1/build.sh"
    bash "${COLL}/tests/kube/build.sh"
    pytest_suite tests/rke1
}

step_ansible_lint() {
    need_stage
    # --offline keeps ansible-lint from installing anything; the staged tree makes the collection's
    # own FQCNs (kubepki.certs.*) resolvable.
    ANSIBLE_COLLECTIONS_PATH="${STAGE_ROOT}" ansible-lint --offline
}

# AWX as configuration (playbooks/awx) and the execution environment (meta/execution-environment.yml). awx.awx comes
# from PyPI's ansible package, whose wheel bundles ansible_collections/awx/awx (no Galaxy here): the pinned wheel is
# downloaded into the work dir (hash-checked) and only that collection extracted; nothing is installed.
AWX_ANSIBLE_WHEEL="ansible==12.3.0"
AWX_ANSIBLE_WHEEL_SHA256="cd156f82fa87f7a899212b0efa9f7ca3a24d609212de9f78428a572eb01e5414"
step_awx_ee() {
    need_stage
    local work="${WORK}/awx" pkg pin ee_pin wheel out passed failed rc=0
    rm -rf "${work}"
    mkdir -p "${work}"

    # The EE definition: ansible-builder reads its requirement files beside it (meta/), introspection at the
    # collection root; the copies must be equal, the pins those of the test stack.
    cmp requirements.txt meta/requirements.txt
    cmp bindep.txt meta/bindep.txt
    for pkg in ansible-core ansible-runner; do
        pin="$(grep -E "^${pkg}==" tests/requirements.txt)"
        ee_pin="$(python -c 'import sys, yaml
deps = yaml.safe_load(open("meta/execution-environment.yml"))["dependencies"]
print(deps[sys.argv[1].replace("-", "_")]["package_pip"])' "${pkg}")"
        if [ "${pin}" != "${ee_pin}" ]; then
            echo "meta/execution-environment.yml pins ${ee_pin}, tests/requirements.txt ${pin}"
            return 1
        fi
    done
    ansible-builder create -f meta/execution-environment.yml --context "${work}/ee" --output-filename Containerfile
    test -s "${work}/ee/Containerfile"
    cmp requirements.txt "${work}/ee/_build/requirements.txt"
    cmp bindep.txt "${work}/ee/_build/bindep.txt"
    grep -F "ansible-core==" "${work}/ee/Containerfile"
    # Introspection (an EE that installs the collection) finds the collection's requirements.
    ansible-builder introspect "${STAGE_ROOT}" \
        --write-pip "${work}/introspect-pip.txt" --write-bindep "${work}/introspect-bindep.txt"
    grep -E '^cryptography' "${work}/introspect-pip.txt"
    grep -E '^openssl ' "${work}/introspect-bindep.txt"

    # awx.awx from the ansible wheel.
    printf '%s --hash=sha256:%s\n' "${AWX_ANSIBLE_WHEEL}" "${AWX_ANSIBLE_WHEEL_SHA256}" > "${work}/wheel.txt"
    python -m pip download -q --no-deps --only-binary=:all: --require-hashes -r "${work}/wheel.txt" -d "${work}/wheel"
    wheel="$(find "${work}/wheel" -name 'ansible-*.whl' -print -quit)"
    python - "${wheel}" "${work}/collections" <<'PY'
import json, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    members = [name for name in wheel.namelist() if name.startswith("ansible_collections/awx/awx/")]
    wheel.extractall(sys.argv[2], members)
    info = json.loads(wheel.read("ansible_collections/awx/awx/MANIFEST.json"))["collection_info"]
print("awx.awx %s from %s (%d files)" % (info["version"], sys.argv[1].rsplit("/", 1)[-1], len(members)))
PY

    # The playbook with the real collection: syntax, ansible-lint (production profile; args checks every module
    # option against awx.awx's argument specs, --strict makes its findings fatal), then what neither checks.
    export ANSIBLE_COLLECTIONS_PATH="${work}/collections:${STAGE_ROOT}"
    ansible-playbook --syntax-check playbooks/awx/configure.yml
    ansible-lint --offline --strict --enable-list args \
        playbooks/awx/configure.yml playbooks/awx/vars/controller.yml playbooks/awx/vars/templates.yml
    out="$(python tests/awx/check_config.py "${work}/collections/ansible_collections/awx/awx")" || rc=$?
    printf '%s\n' "${out}"
    read -r passed failed < <(printf '%s\n' "${out}" | sed -nE 's/^awx config: ([0-9]+) checks passed, ([0-9]+) failed$/\1 \2/p') || true
    record counts "${passed:-0}" "${failed:-1}" 0
    return "${rc}"
}

step_changelog_lint() {
    need_stage
    antsibull-changelog lint
}

step_docs_lint() {
    need_stage
    ANSIBLE_COLLECTIONS_PATH="${STAGE_ROOT}" antsibull-docs lint-collection-docs --plugin-docs .
}

# The docsite as HTML (antsibull-docs + Sphinx, warnings as errors), every guide, plugin and role page checked.
step_docs_html() {
    need_stage
    bash "${COLL}/scripts/docs-html.sh" "${STAGE_ROOT}" "${WORK}/docsite"
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
if [ "${1:-}" = "--step" ]; then
    set -e
    "${2:?test.sh --step <function>}"
    exit 0
fi

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

echo "test.sh: repository ${ROOT}"
run_step "bootstrap" step_bootstrap 1800
add_kubectl_path
run_step "stage" step_stage 300
if [ -s "${STATE}/coll" ]; then
    COLL="$(cat "${STATE}/coll")"
fi
run_step "ansible-test sanity" step_sanity 1200
run_step "ansible-test units" step_units 900
run_step "units on Debian cryptography" step_units_debian_crypto 600
run_step "ansible-test integration" step_integration 1200
run_step "pytest tests/interop" step_pytest_interop 1200
run_step "pytest tests/lab" step_pytest_lab 3600
run_step "pytest tests/roles" step_pytest_roles 1800
run_step "pytest tests/browser (Chromium)" step_pytest_browser 600
run_step "pytest tests/kube (real kubeadm + control plane)" step_pytest_kube 3600
run_step "pytest tests/rke1 (rke's own Go code)" step_pytest_rke1 1800
run_step "ansible-lint" step_ansible_lint 900
run_step "AWX config + EE" step_awx_ee 600
run_step "antsibull-changelog lint" step_changelog_lint 300
run_step "antsibull-docs lint" step_docs_lint 600
run_step "docs HTML (Sphinx)" step_docs_html 600
run_step "galaxy build" step_build 300

PYTHON_FOR_REPORT="$(command -v python3 || command -v python)"
declare -A STEP_TESTS=()
tests_total="0 0 0"
while read -r key rest; do
    if [ "${key}" = "total" ]; then
        tests_total="${rest}"
    else
        STEP_TESTS["${key}"]="${rest}"
    fi
done < <(tests_table)
read -r tests_passed tests_failed tests_skipped <<< "${tests_total}"

passed=0
failed=0
skipped=0
run_fails=0
total_ms=0
printf '\n%-28s %9s  %-6s %-22s %s\n' "STEP" "TIME" "STATUS" "TESTS (pass/fail/skip)" "NOTE"
printf '%s\n' "------------------------------------------------------------------------------------------------"
for i in "${!STEP_NAMES[@]}"; do
    ms="${STEP_TIMES[$i]}"
    total_ms=$(( total_ms + ms ))
    counts="${STEP_TESTS[$(( i + 1 ))]:--}"
    if [ "${counts}" != "-" ]; then
        counts="${counts// //}"
    fi
    printf '%-28s %7d.%01ds  %-6s %-22s %s\n' "${STEP_NAMES[$i]}" "$(( ms / 1000 ))" "$(( ms % 1000 / 100 ))" \
        "${STEP_STATUS[$i]}" "${counts}" "${STEP_NOTES[$i]}"
    case "${STEP_STATUS[$i]}" in
        PASS) passed=$(( passed + 1 )) ;;
        SKIP) skipped=$(( skipped + 1 )) ;;
        *) failed=$(( failed + 1 )) ;;
    esac
    run_fails=$(( run_fails + STEP_FAILS_RUN[i] ))
done
printf '%s\n' "------------------------------------------------------------------------------------------------"
printf '%-28s %7d.%01ds\n\n' "total" "$(( total_ms / 1000 ))" "$(( total_ms % 1000 / 100 ))"
echo "TESTS: ${tests_passed} passed, ${tests_failed} failed, ${tests_skipped} skipped (the runners' own counts);" \
     "steps: ${passed} PASS, ${failed} FAIL, ${skipped} SKIP"
if [ "${run_fails}" -gt 0 ]; then
    exit 1
fi
exit 0
