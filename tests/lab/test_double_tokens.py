# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ServiceAccount tokens of the k3s lab double (TokenRequest / TokenReview) across a service-key rotation.

The JWTs are decoded and their signatures and key ids checked here with ``cryptography`` against the keys in
``server/tls/service.key``, independently of the double's code; tokens with chosen claims (expired, foreign
issuer, ...) are signed here too and handed to the double's TokenReview. The server runs without etcd
(``disable-etcd``): nothing here needs it. Rotation goes through ``certificate rotate-ca`` with a staged
``service.key`` and a restart, as on a real cluster (a live file edited in place loses against the datastore).
"""

import base64
import hashlib
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    from test_double import PYTHON, lab_fixture, restarted, rotate_ca, started  # pylint: disable=import-error,wrong-import-position
finally:
    sys.path.remove(HERE)

ISSUER = "https://kubernetes.default.svc.cluster.local"
KUBECTL = "/usr/bin/kubectl"


@pytest.fixture(autouse=True, scope="module")
def _tools_installed(double_python):
    """double_python: Debian's python3 with cryptography and yaml (conftest.py)."""
    assert double_python == PYTHON
    assert os.access(KUBECTL, os.X_OK), "needs the real kubectl at %s (Debian package kubectl)" % KUBECTL


# ---- JWT, written here (not the double's code)

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text):
    assert "=" not in text, "JWT segments must be unpadded base64url"
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public_key):
    """Kubernetes keyIDFromPublicKey: unpadded base64url of sha256(DER SubjectPublicKeyInfo)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b64url(hashlib.sha256(der).digest())


def private_keys(path):
    with open(path, "rb") as handle:
        data = handle.read()
    blocks = re.findall(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----\n?", data, re.S)
    assert blocks, "no private key in %s" % path
    return [serialization.load_pem_private_key(block, None) for block in blocks]


def decode(token):
    header, payload, signature = token.split(".")
    return json.loads(unb64url(header)), json.loads(unb64url(payload)), ("%s.%s" % (header, payload)).encode(), unb64url(signature)


def signed_by(token, public_key):
    _header, _claims, signing_input, signature = decode(token)
    try:
        public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        return True
    except InvalidSignature:
        return False


def sign(private_key, claims, kid="auto"):
    header = {"alg": "RS256"}
    if kid == "auto":
        header["kid"] = key_id(private_key.public_key())
    elif kid:
        header["kid"] = kid
    signing_input = "%s.%s" % (b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()))
    signature = private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return "%s.%s" % (signing_input, b64url(signature))


def claims_for(namespace, name, now=None, lifetime=3600, **overrides):
    now = int(time.time() if now is None else now)
    claims = {"iss": ISSUER, "sub": "system:serviceaccount:%s:%s" % (namespace, name), "aud": [ISSUER, "k3s"], "iat": now, "nbf": now,
              "exp": now + lifetime, "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "0-0"}}}
    claims.update(overrides)
    return claims


# ---- the double's kubectl

def create_token(node, name, namespace=None, duration=None, audience=None):
    args = ["kubectl", "create", "token", name] + (["-n", namespace] if namespace else []) + (["--duration", duration] if duration else [])
    args += ["--audience", audience] if audience else []
    result = node.run(*args)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token, result.stdout
    return token


def review(node, token, audiences=None, work=None):
    doc = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    if audiences:
        doc["spec"]["audiences"] = audiences
    fd, path = tempfile.mkstemp(suffix=".json", dir=work)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(doc, handle)
    result = node.run("kubectl", "create", "-f", path, "-o", "json")
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj["kind"] == "TokenReview" and obj["spec"]["token"] == token
    return obj["status"]


def authenticated(node, token, **kwargs):
    status = review(node, token, **kwargs)
    return status["authenticated"] is True


def service_keys(node):
    return private_keys(os.path.join(node.tls, "service.key"))


def stage_service_key(lab, *keys):
    """A rotate-ca staging dir holding only tls/service.key = the given keys, concatenated in order."""
    stage = tempfile.mkdtemp(dir=lab.base, prefix="stage-sa-")
    os.makedirs(os.path.join(stage, "tls"))
    with open(os.path.join(stage, "tls", "service.key"), "wb") as handle:
        for key in keys:
            handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    return stage


lab = lab_fixture("kubepki-double-sa-")


@pytest.fixture(scope="module")
def server(lab):
    node = lab.node("sa1")
    node.config(**{"cluster-init": True, "disable-etcd": True, "lab-datastore": os.path.join(lab.base, "datastore-sa")})
    started(node)
    return node


# ----------------------------------------------------------------------------------------------------


def test_token_request_is_an_rs256_jwt_signed_by_the_first_service_key(server):
    keys = service_keys(server)
    assert len(keys) == 1
    key_a = keys[0]
    assert key_id(private_keys(os.path.join(server.tls, "service.current.key"))[0].public_key()) == key_id(key_a.public_key())
    token = create_token(server, "builder", namespace="ci", duration="1h")
    header, claims, _signing_input, _signature = decode(token)
    assert header == {"alg": "RS256", "kid": key_id(key_a.public_key())}
    assert signed_by(token, key_a.public_key())
    assert not signed_by(token, rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
    assert claims["iss"] == ISSUER
    assert claims["aud"] == [ISSUER, "k3s"]
    assert claims["sub"] == "system:serviceaccount:ci:builder"
    assert claims["kubernetes.io"]["namespace"] == "ci" and claims["kubernetes.io"]["serviceaccount"]["name"] == "builder"
    assert claims["nbf"] == claims["iat"] and abs(claims["iat"] - time.time()) < 60
    assert claims["exp"] - claims["iat"] == 3600
    # default lifetime 1 h, namespace "default", explicit audiences
    _header, claims, _signing_input, _signature = decode(create_token(server, "plain", audience="vault,other"))
    assert claims["exp"] - claims["iat"] == 3600 and claims["sub"] == "system:serviceaccount:default:plain" and claims["aud"] == ["vault", "other"]
    _header, claims, _signing_input, _signature = decode(create_token(server, "long", duration="48h"))
    assert claims["exp"] - claims["iat"] == 48 * 3600
    # the apiserver's minimum of 10 minutes
    result = server.run("kubectl", "create", "token", "short", "--duration", "5m")
    assert result.returncode != 0
    assert "spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes" in result.stderr


def test_token_review_accepts_good_tokens_and_refuses_bad_ones(server, lab):
    key_a = service_keys(server)[0]
    token = create_token(server, "builder", namespace="ci")
    status = review(server, token)
    assert status["authenticated"] is True
    assert status["user"]["username"] == "system:serviceaccount:ci:builder"
    assert set(status["user"]["groups"]) == {"system:serviceaccounts", "system:serviceaccounts:ci", "system:authenticated"}
    assert status["audiences"] == [ISSUER, "k3s"]
    # a token signed here with the service key verifies too: the double checks the JWT, not a list of issued tokens
    assert authenticated(server, sign(key_a, claims_for("ns", "made-here")))
    # tampered payload (signature of the original), tampered signature
    header, payload, signature = token.split(".")
    claims = json.loads(unb64url(payload))
    claims["sub"] = "system:serviceaccount:kube-system:admin"
    claims["kubernetes.io"] = {"namespace": "kube-system", "serviceaccount": {"name": "admin", "uid": "x"}}
    forged = "%s.%s.%s" % (header, b64url(json.dumps(claims).encode()), signature)
    status = review(server, forged)
    assert status["authenticated"] is False and "error in cryptographic primitive" in status["error"], status
    raw = bytearray(unb64url(signature))
    raw[len(raw) // 2] ^= 0x01
    status = review(server, "%s.%s.%s" % (header, payload, b64url(bytes(raw))))
    assert status["authenticated"] is False and "error in cryptographic primitive" in status["error"], status
    # expired (beyond go-jose's 60 s leeway) / inside the leeway / not yet valid / issued in the future
    now = int(time.time())
    status = review(server, sign(key_a, claims_for("ns", "old", now=now - 4000, lifetime=3600 - 300)))
    assert status == {"authenticated": False, "user": {}, "error": "[invalid bearer token, service account token has expired]"}, status
    assert authenticated(server, sign(key_a, claims_for("ns", "just", now=now - 3620, lifetime=3600)))
    status = review(server, sign(key_a, claims_for("ns", "later", nbf=now + 600)))
    assert status["authenticated"] is False and "service account token is not valid yet" in status["error"], status
    status = review(server, sign(key_a, claims_for("ns", "later", iat=now + 600)))
    assert status["authenticated"] is False and "service account token is issued in the future" in status["error"], status
    # another issuer: not this authenticator's token
    status = review(server, sign(key_a, claims_for("ns", "x", iss="https://elsewhere.example")))
    assert status["authenticated"] is False and status["error"] == "invalid bearer token", status
    # audiences: refused for the apiserver's audiences, accepted when the review asks for that audience
    vault = create_token(server, "agent", audience="vault")
    status = review(server, vault)
    assert status["authenticated"] is False and "token audiences" in status["error"] and "is invalid for the target audiences" in status["error"]
    status = review(server, vault, audiences=["vault"])
    assert status["authenticated"] is True and status["audiences"] == ["vault"]
    # a foreign key claiming the service key's kid; an unknown kid; no kid (every key is tried)
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    status = review(server, sign(foreign, claims_for("ns", "x"), kid=key_id(key_a.public_key())))
    assert status["authenticated"] is False and "error in cryptographic primitive" in status["error"], status
    status = review(server, sign(foreign, claims_for("ns", "x")))
    assert status == {"authenticated": False, "user": {}, "error": "[invalid bearer token, invalid signature, no keys found]"}, status
    assert authenticated(server, sign(key_a, claims_for("ns", "x"), kid=None))
    # not a JWT at all; an empty token is a bad request
    assert review(server, "not-a-jwt")["authenticated"] is False
    fd, path = tempfile.mkstemp(suffix=".json", dir=lab.base)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}}, handle)
    result = server.run("kubectl", "create", "-f", path, "-o", "json")
    assert result.returncode != 0 and "token is required for TokenReview in authentication" in result.stderr


def test_api_needs_a_client_certificate(server):
    """Without a client cert under the client CA both endpoints answer 401."""
    ctx = ssl.create_default_context(cafile=os.path.join(server.tls, "server-ca.crt"))
    for path in ("/api/v1/namespaces/default/serviceaccounts/x/token", "/apis/authentication.k8s.io/v1/tokenreviews"):
        conn = http.client.HTTPSConnection(server.address, 6443, context=ctx, timeout=20)
        try:
            conn.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 401, (path, resp.status, resp.read())
        finally:
            conn.close()


def test_real_kubectl_creates_tokens_and_reviews(server, lab):
    """Debian's kubectl against the double: create token, create -f TokenReview (--validate=false: no OpenAPI), create --raw."""
    home = tempfile.mkdtemp(dir=lab.base, prefix="kubectl-home-")
    kubeconfig = os.path.join(server.etc, "k3s.yaml")
    env = {"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def kubectl(*args):
        return subprocess.run([KUBECTL, "--kubeconfig", kubeconfig, "--request-timeout", "20s"] + list(args), check=False, capture_output=True,
                              text=True, timeout=60, env=env)

    result = kubectl("create", "token", "deployer", "-n", "apps", "--duration", "2h")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    header, claims, _signing_input, _signature = decode(token)
    key_a = service_keys(server)[0]
    assert header["kid"] == key_id(key_a.public_key()) and signed_by(token, key_a.public_key())
    assert claims["sub"] == "system:serviceaccount:apps:deployer" and claims["exp"] - claims["iat"] == 7200
    result = kubectl("create", "token", "deployer", "--duration", "1m")
    assert result.returncode != 0 and "may not specify a duration less than 10 minutes" in result.stderr
    doc = os.path.join(home, "review.json")
    with open(doc, "w", encoding="utf-8") as handle:
        json.dump({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}, handle)
    result = kubectl("create", "-f", doc, "-o", "json", "--validate=false")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)["status"]
    assert status["authenticated"] is True and status["user"]["username"] == "system:serviceaccount:apps:deployer"
    result = kubectl("create", "--raw", "/apis/authentication.k8s.io/v1/tokenreviews", "-f", doc)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"]["authenticated"] is True
    with open(doc, "w", encoding="utf-8") as handle:
        json.dump({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token[:-4] + "AAAA"}}, handle)
    result = kubectl("create", "-f", doc, "-o", "json", "--validate=false")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"]["authenticated"] is False


def test_service_key_rotation_keeps_old_tokens_valid_until_the_old_key_is_dropped(server, lab):
    key_a = service_keys(server)[0]
    kid_a = key_id(key_a.public_key())
    token_a = create_token(server, "builder", namespace="ci", duration="24h")
    assert decode(token_a)[0]["kid"] == kid_a and authenticated(server, token_a)
    key_b = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid_b = key_id(key_b.public_key())

    # service.key = [B, A] through rotate-ca; the running server keeps the keys it loaded at start
    result = rotate_ca(server, stage_service_key(lab, key_b, key_a))
    assert result.returncode == 0, result.stderr + server.read_log()[-2000:]
    assert decode(create_token(server, "builder", namespace="ci"))[0]["kid"] == kid_a
    restarted(server)
    assert [key_id(k.public_key()) for k in service_keys(server)] == [kid_b, kid_a]
    assert key_id(private_keys(os.path.join(server.tls, "service.current.key"))[0].public_key()) == kid_b
    assert authenticated(server, token_a), "a token signed with the old key must still verify after the rotation"
    token_b = create_token(server, "builder", namespace="ci", duration="24h")
    assert decode(token_b)[0]["kid"] == kid_b
    assert signed_by(token_b, key_b.public_key()) and not signed_by(token_b, key_a.public_key())
    status = review(server, token_b)
    assert status["authenticated"] is True and status["user"]["username"] == "system:serviceaccount:ci:builder"
    assert authenticated(server, sign(key_a, claims_for("ns", "made-here")))
    # files edited under a running server change nothing until the next start
    saved = {}
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for name in ("service.key", "service.current.key"):
        path = os.path.join(server.tls, name)
        with open(path, "rb") as handle:
            saved[path] = handle.read()
        with open(path, "wb") as handle:
            handle.write(foreign.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    try:
        assert authenticated(server, token_a) and authenticated(server, token_b)
        assert decode(create_token(server, "builder", namespace="ci"))[0]["kid"] == kid_b
    finally:
        for path, content in saved.items():
            with open(path, "wb") as handle:
                handle.write(content)

    # service.key = [B] only: tokens of A are refused, B's still verify
    result = rotate_ca(server, stage_service_key(lab, key_b))
    assert result.returncode == 0, result.stderr + server.read_log()[-2000:]
    assert authenticated(server, token_a), "keys are read at start only"
    restarted(server)
    assert [key_id(k.public_key()) for k in service_keys(server)] == [kid_b]
    status = review(server, token_a)
    assert status == {"authenticated": False, "user": {}, "error": "[invalid bearer token, invalid signature, no keys found]"}, status
    status = review(server, sign(key_a, claims_for("ns", "x"), kid=None))
    assert status["authenticated"] is False and "error in cryptographic primitive" in status["error"], status
    assert authenticated(server, token_b)
    assert decode(create_token(server, "builder", namespace="ci"))[0]["kid"] == kid_b
    assert "verification key(s): %s" % kid_b in server.read_log()
