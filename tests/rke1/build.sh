#!/usr/bin/env bash
# Builds tests/rke1/gen (rke1-fixtures: RKE1 fixtures written by rke's own Go packages, github.com/rancher/rke at
# the version pinned in tests/rke1/gen/go.mod). The binary is cached per rke version under $KUBEPKI_RKE1_CACHE
# (default <repo>/.cache/rke1/<rke version>/rke1-fixtures) and built only when it is not there.
# Prints the binary's path on the last line of stdout; the build time goes to stderr.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
GEN="${HERE}/gen"
RKE_VERSION="$(awk '$1 == "require" && $2 == "github.com/rancher/rke" {print $3; exit}
                    $1 == "github.com/rancher/rke" && $2 ~ /^v/ {print $2; exit}' "${GEN}/go.mod")"
if [ -z "${RKE_VERSION}" ]; then
    echo "tests/rke1/build.sh: cannot read the github.com/rancher/rke version from ${GEN}/go.mod" >&2
    exit 1
fi
CACHE="${KUBEPKI_RKE1_CACHE:-${ROOT}/.cache/rke1}/${RKE_VERSION}"
TARGET="${CACHE}/rke1-fixtures"
log() { printf 'tests/rke1/build.sh: %s\n' "$*" >&2; }
# Rebuilt when the generator's source is newer than the cached binary.
if [ -x "${TARGET}" ] && [ -z "$(find "${GEN}" -newer "${TARGET}" -type f -print -quit)" ]; then
    log "cached: ${TARGET} (rke ${RKE_VERSION})"
    echo "${TARGET}"
    exit 0
fi
# The upstream Go install wins over Debian's golang-go (1.19, too old for go.mod's "go 1.26").
if [ -x /usr/local/go/bin/go ]; then PATH="/usr/local/go/bin:${PATH}"; fi
command -v go >/dev/null || { log "ERROR: go is not on PATH (Go 1.26 or newer is needed)"; exit 1; }
log "$(go version), GOPROXY=$(go env GOPROXY), rke ${RKE_VERSION}"
mkdir -p "${CACHE}"
cd "${GEN}"
export GOFLAGS="-mod=mod -trimpath"
start=$(date +%s)
go build -ldflags "-s -w" -o "${TARGET}.tmp" .
mv "${TARGET}.tmp" "${TARGET}"  # atomic: a binary in the cache is always a complete one
log "built rke1-fixtures in $(( $(date +%s) - start )) s ($(du -h "${TARGET}" | cut -f1))"
echo "${TARGET}"
