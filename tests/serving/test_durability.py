"""Durability: a real uvicorn server (`python -m serving.cli`) on the SQLite store is SIGKILLed
while a client streams /v1/events; after a restart every acknowledged event is present, and
re-sending everything (a client retry) stores nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.store.sqlite import SQLiteStore
from tests.serving.conftest import free_port

TOKEN = "durability-token"
ROOT = Path(__file__).resolve().parents[2]


def start_server(model_dir: Path, db: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "RECSYS_SERVING_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", str(model_dir), "--store", f"sqlite:{db}", "--port", str(port), "--no-bootstrap"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError("server not ready after 60 s")


def event(k: int) -> dict:
    return {"event_id": f"ev-{k}", "user_id": 100 + k % 3, "item_id": 50_000 + k, "timestamp": k}


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_acknowledged_event(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    db, port = tmp_path / "state.sqlite3", free_port()
    proc = start_server(model_dirs["sdim"], db, port)
    acked: list[int] = []
    attempted: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5) as c:
            k = 0
            while not stop.is_set():
                batch = list(range(k, k + 1 + k % 3))  # batches of 1-3 events
                attempted.extend(batch)
                try:
                    r = c.post("/v1/events", json={"events": [event(i) for i in batch]})
                except httpx.HTTPError:
                    return  # the server died under this request: not acknowledged
                assert r.status_code == 200, r.text
                acked.extend(batch)
                k = batch[-1] + 1

    writer = threading.Thread(target=stream)
    writer.start()
    while len(acked) < 120 and writer.is_alive():
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the writer still has requests in flight
    proc.wait(timeout=10)
    stop.set()
    writer.join(timeout=10)
    assert len(acked) >= 120

    proc = start_server(model_dirs["sdim"], db, port)
    try:
        store = SQLiteStore(db)
        missing = [k for k in acked if not store.has_event(f"ev-{k}")]
        assert missing == []
        items = [int(i) for u in (100, 101, 102) for i in store.history(u).items]
        assert len(items) == len(set(items)) and set(items) >= {50_000 + k for k in acked}
        # a client retrying everything it ever sent: no event is stored twice
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
            for lo in range(0, len(attempted), 50):
                assert c.post("/v1/events", json={"events": [event(k) for k in attempted[lo:lo + 50]]}).status_code == 200
        for u in (100, 101, 102):
            got = store.history(u).items.tolist()
            assert got == [50_000 + k for k in attempted if 100 + k % 3 == u], f"user {u}: history differs after retry"
            assert store.version(u) == len(got)
        store.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        err = proc.stderr.read().decode()
        # uvicorn shuts down gracefully, then re-raises the signal (exit status -SIGTERM)
        assert code in (0, -signal.SIGTERM) and "shutdown complete" in err, err[-2000:]
