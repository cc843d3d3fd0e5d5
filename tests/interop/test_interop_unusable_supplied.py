# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Supplied CA material that cannot issue a working CA set must be refused, not silently used.

Each case is a root/intermediate made with openssl that verifiers refuse as the parent of the cluster
CAs (or of their leaves). The module must fail and write nothing. If it succeeds instead, the test shows
what openssl and Go say about a server leaf issued under the resulting server-ca.
"""

from __future__ import annotations

import os

import pytest

from interop_lib import CA_EXTENSIONS, run_playbook

NO_CERT_SIGN = ("subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\nbasicConstraints=critical,CA:true\n"
                "keyUsage=critical,digitalSignature\n")
CLIENT_EKU = CA_EXTENSIONS % "critical,CA:true" + "extendedKeyUsage=clientAuth\n"

# case -> (what is wrong, extensions of the supplied intermediate or None, extensions of the supplied root)
CASES = {
    "intermediate-pathlen0": ("the intermediate has pathlen:0, yet the cluster CAs below it are CAs",
                              CA_EXTENSIONS % "critical,CA:true,pathlen:0", None),
    "intermediate-without-certsign": ("the intermediate's keyUsage lacks keyCertSign", NO_CERT_SIGN, None),
    "intermediate-eku-client-only": ("the intermediate's EKU allows clientAuth only: no serving leaf can chain to it",
                                     CLIENT_EKU, None),
    "root-pathlen0-with-key": ("the root has pathlen:0; the module puts an intermediate AND cluster CAs below it",
                               None, CA_EXTENSIONS % "critical,CA:true,pathlen:0"),
}


@pytest.fixture(scope="module")
def unusable_runs(tmp_path_factory, openssl):
    base = str(tmp_path_factory.mktemp("unusable"))
    tasks, paths = [], {}
    for name, (_why, inter_ext, root_ext) in CASES.items():
        work = os.path.join(base, name + ".supplied")
        os.makedirs(work)
        root, root_key = openssl.self_signed_ca(work, "root", cn=name + "-root", extensions=root_ext)
        options = {"distribution": "k3s", "root_cert": root, "intermediate_key_type": "ecdsa-p256",
                   "path": os.path.join(base, name)}
        if inter_ext:
            key = openssl.genkey(os.path.join(work, "inter.key"))
            inter, _key = openssl.sign(work, "inter", key, cn=name + "-inter", issuer_cert=root, issuer_key=root_key,
                                       days=3000, extensions=inter_ext)
            options.update(intermediate_cert=inter, intermediate_key=key)
        else:
            options["root_key"] = root_key
        paths[name] = options["path"]
        tasks.append({"name": name, "kubepki.certs.ca_chain": options})
    return run_playbook(tasks, base), paths


@pytest.mark.parametrize("case", list(CASES))
def test_module_refuses_unusable_supplied_ca(case, unusable_runs, openssl, go_verifier, tmp_path):
    results, paths = unusable_runs
    result, path = results[case], paths[case]
    if result.get("failed"):
        assert "cannot issue the CA set" in result.get("msg", ""), result.get("msg")
        assert not os.path.exists(os.path.join(path, "server-ca.crt")), "the module failed but wrote files"
        return
    # The module accepted it: show what the verifiers make of the result.
    leaf, _key = openssl.leaf(str(tmp_path), "server", issuer_cert=os.path.join(path, "server-ca.pem"),
                              issuer_key=os.path.join(path, "server-ca.key"), cn="kube-apiserver", server=True,
                              client=False, dns=("localhost",))
    bundle = os.path.join(path, "server-ca.crt")
    ossl = openssl.verify(leaf, cafile=os.path.join(path, "root-ca.pem"), untrusted=bundle, purpose="sslserver")
    golang = go_verifier.verify(leaf, roots=os.path.join(path, "root-ca.pem"), intermediates=bundle, usage="server",
                                dns="localhost")
    pytest.fail("ca_chain accepted unusable supplied CA material (%s) and reported changed=%s, token_ca_hash=%s "
                "(Go hashCA: %s).\nopenssl verify of a server leaf under server-ca: %s\nGo: %s"
                % (CASES[case][0], result.get("changed"), result.get("token_ca_hash"),
                   go_verifier.hashca(bundle), (ossl.stdout + ossl.stderr).strip(),
                   (golang.stdout + golang.stderr).strip() or "OK"), pytrace=False)
