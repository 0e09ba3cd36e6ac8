"""Real S3-compatible servers on 127.0.0.1 for the tests: moto's standalone server, plus two faulty
endpoints (one that accepts connections and never answers, one that cuts downloads short).

Nothing here mocks a client: s3fs talks HTTP to these servers exactly as it talks to AWS.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator

import boto3
from botocore.config import Config

# moto accepts any key unless told to check them; these are the keys the tests sign with.
TEST_KEY = "testing"
TEST_SECRET = "testing"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_server(log_path: str | os.PathLike | None = None) -> Iterator[str]:
    """Start ``python -m moto.server`` on a free loopback port; yield its endpoint URL; stop it.

    ``log_path`` keeps the server's request log (one line per HTTP request), e.g. to count requests.

    moto refuses unsigned (anonymous) requests to a bucket unless its policy allows them, as AWS
    does: ``public_bucket`` makes a bucket readable like the Cell Painting Gallery.
    """
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": TEST_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET}
    log = open(log_path, "wb") if log_path else subprocess.PIPE
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                detail = process.stderr.read().decode()[-2000:] if process.stderr else f"see {log_path}"
                raise RuntimeError(f"moto server exited ({process.returncode}): {detail}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("moto server did not start within 60 s")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
        if log_path:
            log.close()


def s3_client(endpoint: str):
    """A signed boto3 client for filling the test buckets (the code under test reads anonymously)."""
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=TEST_KEY, aws_secret_access_key=TEST_SECRET,
        region_name="us-east-1", config=Config(retries={"total_max_attempts": 1}),
    )


def public_bucket(client, bucket: str) -> None:
    """Create ``bucket`` with a policy letting anyone list and read it (the Gallery's setup)."""
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:  # another test module of the session made it
        pass
    policy = {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        }],
    }
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """An endpoint that accepts TCP connections (the kernel's backlog does) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextlib.contextmanager
def truncating_proxy(upstream: str, marker: str) -> Iterator[str]:
    """A loopback HTTP proxy to ``upstream`` that sends only half the body of GETs whose path has
    ``marker`` (with the full Content-Length announced) and then closes the connection."""
    upstream_host, upstream_port = upstream.split("//", 1)[1].split(":")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep the test output clean
            pass

        def forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            connection = http.client.HTTPConnection(upstream_host, int(upstream_port), timeout=30)
            headers = {key: value for key, value in self.headers.items() if key.lower() != "host"}
            headers["Host"] = f"{upstream_host}:{upstream_port}"
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            connection.close()
            cut = self.command == "GET" and marker in self.path and response.status == 200
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            if cut:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload[: len(payload) // 2] if cut else payload)
            if cut:
                self.wfile.flush()
                self.close_connection = True

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="truncating-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
