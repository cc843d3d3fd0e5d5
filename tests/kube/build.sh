#!/usr/bin/env bash
# Builds the real Kubernetes control-plane binaries (kubeadm, kube-apiserver, kube-controller-manager,
# kube-scheduler) from the Go module k8s.io/kubernetes, and etcd from go.etcd.io/etcd/server/v3, at the
# versions pinned in tests/kube/go.mod. Binaries are cached per version under $KUBEPKI_KUBE_CACHE
# (default <repo>/.cache/kube/<k8s version>); a rebuild happens only when the version changes.
# Prints the cache dir on the last line of stdout; the build times go to stderr.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
# The versions are read from go.mod's require block (one module per line: "<path> <version> [// indirect]").
module_version() { awk -v m="$1" '$1 == m && $2 ~ /^v/ {print $2; exit}' "${HERE}/go.mod"; }
K8S_VERSION="$(module_version k8s.io/kubernetes)"
ETCD_VERSION="$(module_version go.etcd.io/etcd/server/v3)"
if [ -z "${K8S_VERSION}" ] || [ -z "${ETCD_VERSION}" ]; then
    echo "tests/kube/build.sh: cannot read the k8s.io/kubernetes and etcd versions from ${HERE}/go.mod" >&2
    exit 1
fi
CACHE="${KUBEPKI_KUBE_CACHE:-${ROOT}/.cache/kube}/${K8S_VERSION}"
COMPONENTS=(kubeadm kube-apiserver kube-controller-manager kube-scheduler)

log() { printf 'tests/kube/build.sh: %s\n' "$*" >&2; }

if [ -f "${CACHE}/.complete" ]; then
    log "cached: ${CACHE} (k8s ${K8S_VERSION}, etcd ${ETCD_VERSION})"
    echo "${CACHE}"
    exit 0
fi
command -v go >/dev/null || { log "ERROR: go is not on PATH (Go 1.26 or newer is needed)"; exit 1; }
mkdir -p "${CACHE}"
# kubeadm and the components read their own version (kubeadm refuses to guess one otherwise): stamp it
# the way the upstream release build does.
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}
 -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
cd "${HERE}"
export GOFLAGS="-mod=mod -trimpath"
total_start=$(date +%s)
for name in "${COMPONENTS[@]}"; do
    start=$(date +%s)
    go build -ldflags "${ldflags}" -o "${CACHE}/${name}.tmp" "k8s.io/kubernetes/cmd/${name}"
    mv "${CACHE}/${name}.tmp" "${CACHE}/${name}"
    log "built ${name} in $(( $(date +%s) - start )) s ($(du -h "${CACHE}/${name}" | cut -f1))"
done
start=$(date +%s)
go build -ldflags "-s -w" -o "${CACHE}/etcd.tmp" ./cmd/etcd
mv "${CACHE}/etcd.tmp" "${CACHE}/etcd"
log "built etcd ${ETCD_VERSION} in $(( $(date +%s) - start )) s ($(du -h "${CACHE}/etcd" | cut -f1))"
log "all binaries built in $(( $(date +%s) - total_start )) s (cold when the Go module and build caches were empty)"
printf '%s %s\n' "${K8S_VERSION}" "${ETCD_VERSION}" > "${CACHE}/.complete"
echo "${CACHE}"
