#!/usr/bin/env bash
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Benchmark baseline: build a k3s custom CA set with nothing but the openssl CLI, with the same file
# set and certificate profiles as kubepki.certs' ca_chain engine (plugins/module_utils/_pki/ca_set.py):
#
#   root-ca.{pem,crt,key}            self-signed, <root-key-type> (default rsa-4096), 7300 d, no AKI
#   intermediate-ca.{pem,crt,key}    issued by root, same key type as the root, 3700 d; .crt = int + root
#   server-ca, client-ca, request-header-ca, etcd/server-ca, etcd/peer-ca:
#     <ca>.key (EC P-256 SEC1), <ca>.pem (issued by the intermediate, 3700 d), <ca>.crt = ca + int + root
#   service.key                      RSA 2048, PKCS#1
#
# Every CA: critical basicConstraints CA:true (no pathlen), critical keyUsage digitalSignature,
# keyEncipherment, keyCertSign, SKI = hash, AKI = keyid of the issuer (not on the root).
# Keys are PKCS#1 / SEC1 ("traditional"), mode 0600; certificates 0644; directories 0700.
#
# Usage: openssl_ca_set.sh <tls-dir> [rsa-2048|rsa-3072|rsa-4096|ecdsa-p256]
# Env:   OPENSSL (openssl binary, default "openssl"), PRODUCT (CN prefix, default "k3s").
# The tls dir must not hold a root-ca.pem yet: this is a from-scratch generator, not an updater.

set -euo pipefail

die() {
    echo "openssl_ca_set.sh: $*" >&2
    exit 1
}

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 <tls-dir> [rsa-2048|rsa-3072|rsa-4096|ecdsa-p256]" >&2
    exit 2
fi

tls_dir=$1
upper_key_type=${2:-rsa-4096}
openssl_bin=${OPENSSL:-openssl}
product=${PRODUCT:-k3s}
printf -v now '%(%s)T' -1   # bash builtin: no date(1) process

case $upper_key_type in
    rsa-2048 | rsa-3072 | rsa-4096 | ecdsa-p256) ;;
    *) die "unsupported root key type '$upper_key_type'" ;;
esac

umask 077
mkdir -p "$tls_dir/etcd"
if [ -e "$tls_dir/root-ca.pem" ]; then
    die "$tls_dir/root-ca.pem already exists; give an empty directory"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

profile="$work/profile.cnf"
cat >"$profile" <<'EOF'
[req]
distinguished_name = req_dn
prompt = no

[req_dn]
CN = placeholder

[v3_root]
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = none

[v3_ca]
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

# genkey <key-type> <out>: traditional PEM (PKCS#1 for RSA, SEC1 for EC).
genkey() {
    case $1 in
        rsa-*) "$openssl_bin" genrsa -traditional -out "$2" "${1#rsa-}" ;;
        ecdsa-p256) "$openssl_bin" ecparam -name prime256v1 -genkey -noout -out "$2" ;;
        *) die "unknown key type '$1'" ;;
    esac
}

# issue <rel-name> <cn-stem> <key-type> <days> <issuer-rel-name>: key, CSR piped into x509 -req.
issue() {
    local name=$1 stem=$2 key_type=$3 days=$4 issuer=$5
    genkey "$key_type" "$tls_dir/$name.key"
    "$openssl_bin" req -new -key "$tls_dir/$name.key" -subj "/CN=$product-$stem@$now" -config "$profile" \
        | "$openssl_bin" x509 -req -sha256 -days "$days" \
            -CA "$tls_dir/$issuer.pem" -CAkey "$tls_dir/$issuer.key" \
            -extfile "$profile" -extensions v3_ca -out "$tls_dir/$name.pem" 2>"$work/x509.err" \
        || { cat "$work/x509.err" >&2; die "cannot issue $name"; }
}

# Root: self-signed in one step.
genkey "$upper_key_type" "$tls_dir/root-ca.key"
"$openssl_bin" req -x509 -new -sha256 -days 7300 -key "$tls_dir/root-ca.key" \
    -subj "/CN=$product-root-ca@$now" -config "$profile" -extensions v3_root -out "$tls_dir/root-ca.pem"
cat "$tls_dir/root-ca.pem" >"$tls_dir/root-ca.crt"

# Intermediate, issued by the root.
issue intermediate-ca intermediate-ca "$upper_key_type" 3700 root-ca
cat "$tls_dir/intermediate-ca.pem" "$tls_dir/root-ca.pem" >"$tls_dir/intermediate-ca.crt"

# The five cluster CAs, issued by the intermediate; <ca>.crt = ca + intermediate + root.
for ca in server-ca client-ca request-header-ca etcd/server-ca etcd/peer-ca; do
    issue "$ca" "${ca//\//-}" ecdsa-p256 3700 intermediate-ca
    cat "$tls_dir/$ca.pem" "$tls_dir/intermediate-ca.pem" "$tls_dir/root-ca.pem" >"$tls_dir/$ca.crt"
done

# ServiceAccount signing key.
genkey rsa-2048 "$tls_dir/service.key"

chmod 0644 "$tls_dir"/*.pem "$tls_dir"/*.crt "$tls_dir"/etcd/*.pem "$tls_dir"/etcd/*.crt
