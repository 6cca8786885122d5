"""Behaviour that needs a real HTTP server (uvicorn in a thread, raw sockets, headless chromium):
half-sent bodies time out with 408, a client that disconnects mid-body is counted as 499 (not as
a 400 of ours), and /docs renders with no network (Swagger UI assets served by the app itself)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import uvicorn

from serving.app import create_app
from serving.settings import ServingSettings
from tests.serving import models as M
from tests.serving.conftest import free_port

TOKEN = "live-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("live") / "state.sqlite3"
    settings = ServingSettings(store=f"sqlite:{path}", token=TOKEN, body_read_timeout_s=0.5)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(settings, ctr=M.ctr_scorer()), host="127.0.0.1", port=port,
                                        log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def partial_request(hostport: str, body: bytes, declared: int) -> socket.socket:
    host, port = hostport.split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    head = (f"POST /v1/events HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n").encode()
    sock.sendall(head + body)
    return sock


def requests_by_status(hostport: str, endpoint: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"http://{hostport}/metrics").text.splitlines():
        if line.startswith("recsys_requests_total{") and f'endpoint="{endpoint}"' in line:
            status = line.split('status="')[1].split('"')[0]
            out[status] = float(line.rsplit(" ", 1)[1])
    return out


def test_half_sent_body_is_closed_with_408(server: str) -> None:
    sock = partial_request(server, b'{"events": [', 400)
    t0 = time.monotonic()
    data = b""
    try:
        while chunk := sock.recv(65536):  # the server answers, then closes the connection
            data += chunk
    finally:
        sock.close()
    waited = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"body_read_timeout_s=0.5" in data and b'"message"' in data
    assert waited < 4.0  # closed by the server (the socket's own timeout is 5 s)
    assert requests_by_status(server, "/v1/events").get("408") == 1.0


def test_client_disconnect_is_not_counted_as_400(server: str) -> None:
    before = requests_by_status(server, "/v1/events")
    sock = partial_request(server, b'{"events": [{"event_id": "x", ', 400)
    time.sleep(0.1)
    sock.close()
    deadline = time.monotonic() + 5
    while requests_by_status(server, "/v1/events").get("499", 0.0) == before.get("499", 0.0) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = requests_by_status(server, "/v1/events")
    assert after.get("499", 0.0) == before.get("499", 0.0) + 1, after
    assert after.get("400", 0.0) == before.get("400", 0.0), after


def test_docs_render_without_network(server: str, tmp_path: Path) -> None:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("`chromium` binary not found (installed by scripts/sysdeps.sh, `make sysdeps`)")
    html = httpx.get(f"http://{server}/docs").text
    assert "cdn" not in html.lower() and "/static-offline-docs/swagger-ui-bundle.js" in html  # no external asset
    # every host but the server's resolves to nothing: a page that needs a CDN renders blank
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=15000", "--dump-dom",
         f"http://{server}/docs"],
        capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    # rendered by Swagger UI's JavaScript from /openapi.json: operation blocks for every endpoint
    assert 'class="swagger-ui' in dom and "opblock" in dom, (dom[-2000:], proc.stderr[-2000:])
    for path in ("/v1/score", "/v1/recommend", "/v1/events", "/admin/reload"):
        assert path in dom
