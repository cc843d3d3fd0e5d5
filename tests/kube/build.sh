#!/usr/bin/env bash
# Builds the real Kubernetes control-plane binaries (kubeadm, kube-apiserver, kube-controller-manager,
# kube-scheduler) from the Go module k8s.io/kubernetes, and etcd from go.etcd.io/etcd/server/v3, at the
# versions pinned in tests/kube/go.mod. Binaries are cached per version under $KUBEPKI_KUBE_CACHE
# (default <repo>/.cache/kube/<k8s version>, etcd as etcd-<etcd version>); a binary is built only when it is
# not there for its version. Arguments name the binaries to build (default: all of kubeadm kube-apiserver
# kube-controller-manager kube-scheduler etcd), so CI builds only what its tests run.
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
ALL=(kubeadm kube-apiserver kube-controller-manager kube-scheduler etcd)
if [ "$#" -gt 0 ]; then WANTED=("$@"); else WANTED=("${ALL[@]}"); fi

log() { printf 'tests/kube/build.sh: %s\n' "$*" >&2; }

target_of() {  # the cached file of one binary: etcd carries its own version in the name
    if [ "$1" = etcd ]; then echo "${CACHE}/etcd-${ETCD_VERSION}"; else echo "${CACHE}/$1"; fi
}

missing=()
for name in "${WANTED[@]}"; do
    case " ${ALL[*]} " in *" ${name} "*) ;; *) log "ERROR: unknown binary ${name} (one of: ${ALL[*]})"; exit 2 ;; esac
    [ -x "$(target_of "${name}")" ] || missing+=("${name}")
done
if [ "${#missing[@]}" -eq 0 ]; then
    log "cached: ${CACHE} (k8s ${K8S_VERSION}, etcd ${ETCD_VERSION}): ${WANTED[*]}"
    echo "${CACHE}"
    exit 0
fi
# The upstream Go install wins over Debian's golang-go (1.19, too old for go.mod's "go 1.26").
if [ -x /usr/local/go/bin/go ]; then PATH="/usr/local/go/bin:${PATH}"; fi
command -v go >/dev/null || { log "ERROR: go is not on PATH (Go 1.26 or newer is needed)"; exit 1; }
log "$(go version), GOPROXY=$(go env GOPROXY)"
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
for name in "${missing[@]}"; do
    start=$(date +%s)
    target="$(target_of "${name}")"
    if [ "${name}" = etcd ]; then
        go build -ldflags "-s -w" -o "${target}.tmp" ./cmd/etcd
    else
        go build -ldflags "${ldflags}" -o "${target}.tmp" "k8s.io/kubernetes/cmd/${name}"
    fi
    mv "${target}.tmp" "${target}"  # atomic: a binary in the cache is always a complete one
    log "built ${name} in $(( $(date +%s) - start )) s ($(du -h "${target}" | cut -f1))"
done
log "built ${missing[*]} in $(( $(date +%s) - total_start )) s (cold when the Go module and build caches were empty)"
echo "${CACHE}"
