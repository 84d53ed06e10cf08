#!/usr/bin/python3
"""A small token service for the distribution registry's `auth: token` mode,
the flow Docker Hub, GHCR and Quay use (the registry answers
`WWW-Authenticate: Bearer realm=…,service=…,scope=…` and the client fetches a
JWT from the realm), for the tests of `oci-artifact`.

    token_service.py DIR POLICY.json [HOST]

It makes a signing key and a self-signed certificate, writes the certificate
to DIR/token-cert.pem (the registry's `rootcertbundle`), listens on
HOST (default 127.0.0.1) on a free port, prints the port on stdout, and serves
`GET /token?service=…&scope=repository:NAME:ACTIONS` as the registry's token
spec says. Each JWT carries the certificate in its `x5c` header, which is how
registry 2.8 finds the key to check it with.

POLICY.json:
    {"issuer": "...", "service": "...",
     "users": {"NAME": {"password": "...", "expired": false}},
     "anonymous_pull": ["public/"],     # repository prefixes anyone may pull
     "read_only": ["locked/"]}          # prefixes users may only pull

Users get pull and push everywhere but `read_only`; a user with
`"expired": true` gets tokens that expired five minutes ago. A wrong password
is answered 401. A scope that is not granted is left out of the token, as
real token services do, so the registry refuses the request.

Every request is logged, one JSON object per line, to DIR/token-requests.log:
the scope asked for, the user (if any), what was granted, and the answer.
"""

import base64
import datetime
import json
import os
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

DIR = sys.argv[1]
with open(sys.argv[2]) as f:
    POLICY = json.load(f)

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, POLICY["issuer"])])
NOW = datetime.datetime.now(datetime.timezone.utc)
CERT = (
    x509.CertificateBuilder()
    .subject_name(NAME)
    .issuer_name(NAME)
    .public_key(KEY.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(NOW - datetime.timedelta(days=1))
    .not_valid_after(NOW + datetime.timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(KEY, hashes.SHA256())
)
with open(os.path.join(DIR, "token-cert.pem"), "wb") as f:
    f.write(CERT.public_bytes(serialization.Encoding.PEM))
KEY_PEM = KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
)
X5C = base64.b64encode(CERT.public_bytes(serialization.Encoding.DER)).decode()
LOG = os.path.join(DIR, "token-requests.log")


def grant(user, name, actions):
    """The actions of `actions` that `user` (None: anonymous) gets on `name`."""
    if user is None:
        allowed = {"pull"} if any(name.startswith(p) for p in POLICY["anonymous_pull"]) else set()
    elif any(name.startswith(p) for p in POLICY["read_only"]):
        allowed = {"pull"}
    else:
        allowed = {"pull", "push"}
    return [a for a in actions if a in allowed]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, code, body, entry):
        entry["status"] = code
        with open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        entry = {"path": url.path, "scope": query.get("scope", []), "service": query.get("service")}
        if url.path != "/token":
            return self.answer(404, {"errors": [{"code": "NOT_FOUND", "message": "no such path"}]}, entry)
        user = None
        header = self.headers.get("Authorization")
        if header:
            scheme, _, value = header.partition(" ")
            try:
                name, _, password = base64.b64decode(value).decode().partition(":")
            except Exception:
                name, password = "", None
            entry["auth"] = scheme
            entry["user"] = name
            known = POLICY["users"].get(name)
            if scheme.lower() != "basic" or known is None or known["password"] != password:
                return self.answer(
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "incorrect username or password"}]},
                    entry,
                )
            user = name
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            access.append({"type": "repository", "name": name,
                           "actions": grant(user, name, actions.split(","))})
        entry["granted"] = access
        now = int(time.time())
        if user is not None and POLICY["users"][user].get("expired"):
            now -= 600
        claims = {
            "iss": POLICY["issuer"],
            "sub": user or "",
            "aud": query.get("service", [POLICY["service"]])[0],
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "access": access,
        }
        token = jwt.encode(claims, KEY_PEM, algorithm="RS256", headers={"x5c": [X5C]})
        self.answer(200, {"token": token, "access_token": token, "expires_in": 300}, entry)


HOST = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
server = ThreadingHTTPServer((HOST, 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
