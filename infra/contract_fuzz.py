#!/usr/bin/env python3
"""Contract fuzzing: schemathesis against a real running server, with a real tenant, an admin
token and an API key, over every operation of GET /openapi.json. Fails on any server error and on
any response that breaks the description (status, content type, headers, body schema), and on a
panic in the server's log.

Run by `infra/dev.sh test` (and so by CI) after the test suite, or alone with
`infra/dev.sh fuzz-api`. Arguments: the docuchat binary, the owner's and the service role's
database URLs (an empty database), the Redis URL, the schemathesis executable, a PDF to upload.
Bounded: DOCUCHAT_FUZZ_EXAMPLES test cases per operation and phase (default 25), and two minutes
in all (DOCUCHAT_FUZZ_SCALE multiplies it).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

EXAMPLES = os.environ.get("DOCUCHAT_FUZZ_EXAMPLES", "25")
# scales each run's time budget (60 s, 45 s, 15 s): 2 or more for a longer search
SCALE = float(os.environ.get("DOCUCHAT_FUZZ_SCALE", "1"))
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)
TENANT = "contract"
ADMIN = "admin@contract.example"
SECOND = "second@contract.example"


def log(msg):
    print(f"\033[1;34m[contract]\033[0m {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, env, log_path):
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        self.proc = subprocess.Popen(
            [binary, "serve"], env=env, stdout=self.log_file, stderr=subprocess.STDOUT
        )

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise SystemExit("the server did not stop within 30 s of SIGTERM")
        self.log_file.close()


def call(base, method, path, body=None, token=None, headers=None, raw=None, content_type=None):
    h = {"X-Tenant-ID": TENANT}
    h.update(headers or {})
    data = None
    if token:
        h["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    if raw is not None:
        data = raw
        h["Content-Type"] = content_type
    req = urllib.request.Request(base + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def login(base, server, email):
    status, _ = call(base, "POST", "/v1/auth/request-code", {"email": email})
    assert status == 202, status
    pattern = re.compile(r"login code (\d{6})")
    for _ in range(100):
        # the log mailer writes the code on the request's log line, which names no address:
        # the newest code is this request's (logins here are one at a time)
        codes = pattern.findall(server.text())
        if len(codes) > login.seen:
            login.seen = len(codes)
            status, body = call(base, "POST", "/v1/auth/verify-code", {"email": email, "code": codes[-1]})
            assert status == 200, (status, body)
            return body["access_token"]
        time.sleep(0.1)
    raise SystemExit(f"no login code for {email} in the server's log")


login.seen = 0


def upload(base, token, pdf):
    boundary = uuid.uuid4().hex
    with open(pdf, "rb") as f:
        data = f.read()
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"fixture.pdf\"\r\n"
        f"Content-Type: application/pdf\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    status, doc = call(base, "POST", "/v1/files", token=token, raw=body,
                       content_type=f"multipart/form-data; boundary={boundary}")
    assert status == 202, (status, doc)
    for _ in range(600):
        status, view = call(base, "GET", f"/v1/documents/{doc['document_id']}", token=token)
        if view["status"] in ("ready", "failed"):
            return view
        time.sleep(0.1)
    raise SystemExit("the fixture did not finish ingestion within a minute")


def schemathesis(st, base, auth, label, seconds, *selection):
    log(f"schemathesis: {label}")
    cmd = [
        st, "run", f"{base}/openapi.json",
        "-H", f"Authorization: Bearer {auth}",
        "-H", f"X-Tenant-ID: {TENANT}",
        "--phases", "examples,coverage,fuzzing",
        "--checks", CHECKS,
        "-n", EXAMPLES,
        "--seed", os.environ.get("DOCUCHAT_FUZZ_SEED", "20261201"),
        "--request-timeout", "30",
        # the fuzzing phase repeats until the time is spent
        "--max-time", str(int(seconds * SCALE)),
        "--no-color",
        *selection,
    ]
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise SystemExit(f"schemathesis ({label}) found failures: see above")


def main():
    binary, owner_url, app_url, redis_url, st, pdf = sys.argv[1:7]
    env = dict(os.environ)
    env.update(DATABASE_URL=app_url, DATABASE_MIGRATION_URL=owner_url, REDIS_URL=redis_url,
               REDIS_KEY_PREFIX=f"contract-{uuid.uuid4().hex[:8]}:")
    owner_env = dict(env, DATABASE_URL=owner_url)
    subprocess.run([binary, "migrate"], env=owner_env, check=True)
    subprocess.run([binary, "tenant", "create", "--name", "Contract", "--slug", TENANT, "--admin-email", ADMIN],
                   env=owner_env, check=True, stdout=subprocess.DEVNULL)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = os.path.join(tempfile.mkdtemp(prefix="docuchat-contract-"), "server.log")
    server = Server(binary, dict(env, BIND_ADDR=f"127.0.0.1:{port}", METRICS_ADDR="127.0.0.1:0", SMTP_URL=""), log_path)
    try:
        for _ in range(300):
            try:
                if call(base, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("the server did not become healthy")

        admin = login(base, server, ADMIN)
        status, _ = call(base, "POST", "/v1/members", {"email": SECOND, "role": "admin"}, token=admin)
        assert status == 201, status
        second = login(base, server, SECOND)
        status, key = call(base, "POST", "/v1/api-keys",
                           {"name": "contract", "scopes": ["usage:read", "documents:read", "documents:write"]},
                           token=admin)
        assert status == 201, (status, key)
        doc = upload(base, admin, pdf)
        log(f"tenant `{TENANT}`, two admins, an API key, a document ({doc['status']}, {doc['chunk_count']} chunks)")

        # the admin's token, every operation but those that end it
        schemathesis(st, base, admin, "admin token, every operation but logout", 60,
                     "--exclude-operation-id", "logout", "--exclude-operation-id", "logoutAll")
        # the API key, on the operations keys may use (and are refused elsewhere)
        schemathesis(st, base, key["key"], "API key, every operation", 45)
        # logging out last, with a token of its own
        schemathesis(st, base, second, "the second admin's token, logout", 15,
                     "--include-operation-id", "logout", "--include-operation-id", "logoutAll")
    finally:
        server.stop()
    text = server.text()
    if "panicked" in text:
        print(text[-20000:])
        raise SystemExit("the server panicked during contract fuzzing")
    log("contract fuzzing passed: no server error, every response as described")


if __name__ == "__main__":
    main()
