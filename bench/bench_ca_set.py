#!/usr/bin/env python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Time the ca_chain engine against an openssl CLI pipeline building the same k3s CA set.

For each key profile, the engine (``plan_ca_set`` + ``apply_plan``, in process) and
``bench/openssl_ca_set.sh`` (a bash + openssl pipeline) each fill a fresh temporary tls dir, in
alternating order, ``--rounds`` times. The first round also checks that both outputs pass
``openssl verify -x509_strict`` and carry the same files, modes, key formats and certificate
profiles, so the timings compare equal work. After every engine round the engine plans again on the
filled dir (the "second run"), which must plan zero changes. Exits non-zero when anything fails.

Run from the collection root with ``PYTHONPATH=<dir containing ansible_collections>``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import cryptography
from cryptography import x509
from cryptography.hazmat.backends.openssl import backend as openssl_backend
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ansible_collections.kubepki.certs.plugins.module_utils._pki.ca_set import CASetRequest, apply_plan, plan_ca_set

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(BENCH_DIR, "openssl_ca_set.sh")
DISTRIBUTION = "k3s"

# (profile name, key type of root + intermediate); the five cluster CAs are EC P-256 and service.key
# RSA 2048 in both profiles (ca_chain's k3s defaults).
PROFILES = (
    ("default (RSA-4096 root+int)", "rsa-4096"),
    ("all EC P-256", "ecdsa-p256"),
)
CLUSTER_CAS = ("server-ca", "client-ca", "request-header-ca", "etcd/server-ca", "etcd/peer-ca")


class BenchError(Exception):
    """A check failed: the run is not a valid comparison."""


def run_command(argv, *, what: str, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, check=False, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise BenchError("%s failed (exit %d): %s\n%s%s"
                         % (what, result.returncode, " ".join(argv), result.stdout, result.stderr))
    return result


def engine_request(tls_dir: str, upper_key_type: str) -> CASetRequest:
    return CASetRequest(path=tls_dir, distribution=DISTRIBUTION, root_key_type=upper_key_type,
                        intermediate_key_type=upper_key_type)


def run_engine(tls_dir: str, upper_key_type: str) -> float:
    start = time.perf_counter()
    plan = plan_ca_set(engine_request(tls_dir, upper_key_type))
    apply_plan(plan)
    return time.perf_counter() - start


def run_engine_rerun(tls_dir: str, upper_key_type: str) -> float:
    """Plan (and apply) again on a filled dir: must change nothing."""
    start = time.perf_counter()
    plan = plan_ca_set(engine_request(tls_dir, upper_key_type))
    apply_plan(plan)
    elapsed = time.perf_counter() - start
    changed = [f.path for f in plan.files if f.state != "unchanged"]
    if changed:
        raise BenchError("engine re-run on %s planned %d change(s), expected 0: %s"
                         % (tls_dir, len(changed), ", ".join(changed)))
    return elapsed


def run_openssl(tls_dir: str, upper_key_type: str, env=None) -> float:
    start = time.perf_counter()
    run_command(["bash", SCRIPT, tls_dir, upper_key_type], what="openssl pipeline", env=env)
    return time.perf_counter() - start


# -- checks (first round only) -------------------------------------------------------------------

def verify_with_openssl(tls_dir: str, label: str) -> None:
    """openssl verify -x509_strict: intermediate against the root, each CA against root + intermediate,
    and each CA against root + its own bundle (proves the .crt carries the chain)."""
    root = os.path.join(tls_dir, "root-ca.pem")
    intermediate = os.path.join(tls_dir, "intermediate-ca.pem")
    cas = [os.path.join(tls_dir, name + ".pem") for name in CLUSTER_CAS]
    run_command(["openssl", "verify", "-x509_strict", "-CAfile", root, intermediate],
                what="%s: verify intermediate" % label)
    run_command(["openssl", "verify", "-x509_strict", "-CAfile", root, "-untrusted", intermediate] + cas,
                what="%s: verify cluster CAs" % label)
    for name in CLUSTER_CAS:
        run_command(["openssl", "verify", "-x509_strict", "-CAfile", root, "-untrusted",
                     os.path.join(tls_dir, name + ".crt"), os.path.join(tls_dir, name + ".pem")],
                    what="%s: verify %s.pem through its bundle %s.crt" % (label, name, name))


def list_files(tls_dir: str) -> dict:
    """Relative path -> octal mode of every file and directory under ``tls_dir``."""
    found = {}
    for parent, dirs, files in os.walk(tls_dir):
        for name in dirs + files:
            path = os.path.join(parent, name)
            found[os.path.relpath(path, tls_dir)] = "%04o" % (os.stat(path).st_mode & 0o7777)
    return found


def key_type_name(public_key) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa-%d" % public_key.key_size
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ec-" + public_key.curve.name
    return type(public_key).__name__


def cn_stem(name) -> str:
    """The CN without its "@<unix time>" suffix: both tools stamp their own time."""
    values = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return values[0].value.split("@", 1)[0] if values else ""


def extension_or_none(certificate, extension_class):
    try:
        return certificate.extensions.get_extension_for_class(extension_class)
    except x509.ExtensionNotFound:
        return None


def describe_certificate(certificate, issuer) -> dict:
    """Everything of a CA profile that must match between the tools (not serials, keys or times)."""
    constraints = extension_or_none(certificate, x509.BasicConstraints)
    usage = extension_or_none(certificate, x509.KeyUsage)
    ski = extension_or_none(certificate, x509.SubjectKeyIdentifier)
    aki = extension_or_none(certificate, x509.AuthorityKeyIdentifier)
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    issuer_ski = extension_or_none(issuer, x509.SubjectKeyIdentifier)
    return {
        "version": certificate.version.name,
        "subject": cn_stem(certificate.subject),
        "issuer": cn_stem(certificate.issuer),
        "key": key_type_name(certificate.public_key()),
        "signature_hash": certificate.signature_hash_algorithm.name,
        "validity_days": round(lifetime / datetime.timedelta(days=1)),
        "basic_constraints": None if constraints is None else (constraints.critical, constraints.value.ca,
                                                               constraints.value.path_length),
        "key_usage": None if usage is None else (usage.critical, usage.value.digital_signature,
                                                 usage.value.key_encipherment, usage.value.key_cert_sign,
                                                 usage.value.crl_sign),
        "ski_is_key_hash": ski is not None
        and ski.value == x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()),
        "aki_keyid_is_issuer_ski": None if aki is None else (
            issuer_ski is not None and aki.value.key_identifier == issuer_ski.value.digest),
        "aki_issuer_serial": None if aki is None else aki.value.authority_cert_serial_number is not None,
        "extensions": sorted(ext.oid.dotted_string for ext in certificate.extensions),
    }


def describe_tree(tls_dir: str) -> dict:
    """A comparable summary of every file: modes, key formats, certificate profiles, bundle order."""
    summary = {"files": list_files(tls_dir)}
    certs = {}
    for rel in summary["files"]:
        path = os.path.join(tls_dir, rel)
        if rel.endswith(".pem"):
            with open(path, "rb") as handle:
                certs[rel] = x509.load_pem_x509_certificate(handle.read())
    root = certs["root-ca.pem"]
    intermediate = certs["intermediate-ca.pem"]
    for rel, certificate in sorted(certs.items()):
        issuer = root if rel in ("root-ca.pem", "intermediate-ca.pem") else intermediate
        summary[rel] = describe_certificate(certificate, issuer)
    for rel in sorted(summary["files"]):
        path = os.path.join(tls_dir, rel)
        if rel.endswith(".crt"):
            with open(path, "rb") as handle:
                bundle = x509.load_pem_x509_certificates(handle.read())
            summary[rel] = [cn_stem(c.subject) for c in bundle]
            pem = certs[rel[:-len(".crt")] + ".pem"]
            if bundle[0] != pem:
                raise BenchError("%s: first certificate of the bundle is not %s.pem" % (path, rel[:-4]))
        elif rel.endswith(".key"):
            with open(path, "rb") as handle:
                data = handle.read()
            key = serialization.load_pem_private_key(data, password=None)
            summary[rel] = (data.splitlines()[0].decode(), key_type_name(key.public_key()), data.count(b"-----BEGIN"))
            pem_rel = rel[:-len(".key")] + ".pem"
            if pem_rel in certs and certs[pem_rel].public_key() != key.public_key():
                raise BenchError("%s does not match %s" % (path, pem_rel))
    return summary


def compare_outputs(engine_dir: str, openssl_dir: str, profile: str) -> None:
    engine, openssl = describe_tree(engine_dir), describe_tree(openssl_dir)
    differences = []
    for item in sorted(set(engine) | set(openssl)):
        if engine.get(item) != openssl.get(item):
            differences.append("  %s:\n    engine:  %r\n    openssl: %r" % (item, engine.get(item), openssl.get(item)))
    if differences:
        raise BenchError("profile %s: engine and openssl outputs differ, the timings would not compare equal "
                         "work:\n%s" % (profile, "\n".join(differences)))


def engine_plan_on(tls_dir: str, upper_key_type: str) -> int:
    """How many files the engine would change in a dir another tool filled (informational)."""
    plan = plan_ca_set(engine_request(tls_dir, upper_key_type))
    return sum(1 for f in plan.files if f.state != "unchanged")


def count_openssl_processes(base: str, upper_key_type: str) -> int:
    """Run the pipeline once (untimed) through a wrapper that logs each openssl invocation."""
    real = shutil.which("openssl")
    if real is None:
        raise BenchError("openssl is not on PATH")
    log = os.path.join(base, "openssl-invocations.log")
    wrapper = os.path.join(base, "openssl-counter")
    with open(wrapper, "w", encoding="utf-8") as handle:
        handle.write('#!/bin/sh\necho "$*" >>"%s"\nexec "%s" "$@"\n' % (log, real))
    os.chmod(wrapper, 0o700)
    env = dict(os.environ, OPENSSL=wrapper)
    run_openssl(os.path.join(base, "count", "tls"), upper_key_type, env=env)
    with open(log, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def spawn_floor(count: int) -> float:
    """Wall time of ``count`` trivial openssl processes: the pipeline's cost before any crypto."""
    start = time.perf_counter()
    for _index in range(count):
        run_command(["openssl", "version"], what="openssl version")
    return time.perf_counter() - start


def import_cost() -> float:
    """Wall time of a fresh interpreter importing the engine: what a module run pays once on top."""
    start = time.perf_counter()
    run_command([sys.executable, "-c", "import ansible_collections.kubepki.certs.plugins.module_utils._pki.ca_set"],
                what="engine import")
    return time.perf_counter() - start


# -- main ----------------------------------------------------------------------------------------

def bench_profile(base: str, profile: str, upper_key_type: str, rounds: int) -> dict:
    times = {"engine": [], "openssl": [], "rerun": []}
    for number in range(rounds):
        engine_dir = os.path.join(base, "r%d-engine" % number, "tls")
        openssl_dir = os.path.join(base, "r%d-openssl" % number, "tls")
        order = ("engine", "openssl") if number % 2 == 0 else ("openssl", "engine")
        for tool in order:
            if tool == "engine":
                times["engine"].append(run_engine(engine_dir, upper_key_type))
            else:
                times["openssl"].append(run_openssl(openssl_dir, upper_key_type))
        times["rerun"].append(run_engine_rerun(engine_dir, upper_key_type))
        if number == 0:
            verify_with_openssl(engine_dir, "%s engine" % profile)
            verify_with_openssl(openssl_dir, "%s openssl" % profile)
            compare_outputs(engine_dir, openssl_dir, profile)
            times["adopt_changes"] = engine_plan_on(openssl_dir, upper_key_type)
        shutil.rmtree(os.path.dirname(engine_dir))
        shutil.rmtree(os.path.dirname(openssl_dir))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per tool and profile (default 5)")
    parser.add_argument("--tmpdir", default=None, help="where the temporary tls dirs go (default: system temp)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    times_sign = "\u00d7" if (sys.stdout.encoding or "").lower().replace("-", "") == "utf8" else "x"

    started = time.perf_counter()
    load_before = os.getloadavg()
    results = []
    base = tempfile.mkdtemp(prefix="bench-ca-set-", dir=args.tmpdir)
    try:
        versions = run_command(["openssl", "version"], what="openssl version").stdout.strip()
        processes = count_openssl_processes(base, PROFILES[0][1])
        for profile, upper_key_type in PROFILES:
            results.append((profile, bench_profile(base, profile, upper_key_type, args.rounds)))
        cold_import = import_cost()
        floor = spawn_floor(processes)
    except BenchError as exc:
        print("FAIL: %s" % exc, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print("kubepki.certs CA set (k3s layout): engine vs openssl CLI pipeline, %d round(s) each, one run"
          % args.rounds)
    print("openssl CLI: %s" % versions)
    print("engine: cryptography %s linked against %s; Python %s"
          % (cryptography.__version__, openssl_backend.openssl_version_text(), sys.version.split()[0]))
    print("outputs verified (openssl verify -x509_strict) and profiles compared equal in round 1 of each profile")
    print()
    header = "%-28s | %-26s | %-26s | %s" % ("profile", "engine s (median/min/max)", "openssl s (median/min/max)",
                                             "openssl/engine (median)")
    print(header)
    print("-" * len(header))
    for profile, times in results:
        engine, openssl = times["engine"], times["openssl"]
        ratio = statistics.median(openssl) / statistics.median(engine)
        print("%-28s | %7.3f / %7.3f / %7.3f  | %7.3f / %7.3f / %7.3f  | %.1f"
              % (profile, statistics.median(engine), min(engine), max(engine),
                 statistics.median(openssl), min(openssl), max(openssl), ratio))
    print()
    for profile, times in results:
        ratio = statistics.median(times["openssl"]) / statistics.median(times["engine"])
        verdict = "faster" if ratio >= 1 else "slower"
        factor = ratio if ratio >= 1 else 1 / ratio
        print("%s: engine is %.1f%s %s" % (profile, factor, times_sign, verdict))
    print()
    print("openssl processes spawned by the pipeline per CA set: %d (plus bash, mktemp, cat x7, chmod, rm)" % processes)
    print("bare process start: %d x 'openssl version' take %.3f s in total (a lower bound of the pipeline's overhead)"
          % (processes, floor))
    for profile, times in results:
        print("%s: engine idempotent re-run (plan on a filled dir, 0 changes): median %.4f s (min %.4f, max %.4f)"
              % (profile, statistics.median(times["rerun"]), min(times["rerun"]), max(times["rerun"])))
    for profile, times in results:
        print("%s: engine plan on the openssl-made dir would change %d file(s)" % (profile, times["adopt_changes"]))
    print("engine timings are in-process; a fresh interpreter importing the engine adds %.3f s once" % cold_import)
    print("total bench wall time: %.1f s on %d CPU(s); 1-min load average %.2f before, %.2f after"
          % (time.perf_counter() - started, os.cpu_count() or 0, load_before[0], os.getloadavg()[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
