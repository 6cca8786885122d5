"""Ray Serve: two replicas of the app on local Ray sharing the real Redis store; events written
through the proxy are seen by every replica's scoring (kept small: one deployment, a few calls)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from recsys.data.vocab import load_vocabularies
from serving.settings import ServingSettings
from tests.serving.conftest import free_port

TOKEN = "ray-token"


@pytest.mark.ray
@pytest.mark.slow
def test_two_replicas_share_the_redis_store(model_dirs: dict[str, Path], redis_url: str) -> None:
    from serving import ray_serve

    settings = ServingSettings(ctr_model_dir=model_dirs["sdim"], store=redis_url.rsplit("/", 1)[0] + "/3", token=TOKEN)
    with pytest.raises(ValueError, match="shared Redis store"):
        ray_serve.deploy(settings.model_copy(update={"store": "sqlite:x.db"}), replicas=2)
    port = free_port()
    ray_serve.deploy(settings, replicas=2, port=port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            assert c.get("/readyz").status_code == 200
            cands = load_vocabularies(model_dirs["sdim"])["items"].raw_ids[:4].tolist()
            events = [{"event_id": f"r{k}", "user_id": 42, "item_id": cands[k % 4], "timestamp": k} for k in range(6)]
            r = c.post("/v1/events", json={"events": events}, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and len(r.json()["stored"]) == 6
            bodies = [c.post("/v1/score", json={"user_id": 42, "candidates": cands}).json() for _ in range(8)]
            assert all(b["history_length"] == 6 and b["model"]["name"] == "sdim" for b in bodies)
            assert all(b["scores"] == bodies[0]["scores"] for b in bodies)  # same state on every replica
            assert 'recsys_requests_total{endpoint="/v1/score"' in c.get("/metrics").text
    finally:
        ray_serve.shutdown()


def test_replica_app_sets_the_process_knobs() -> None:
    """A replica (its own process) gets `recsys serve`'s torch threads and GIL switch interval."""
    import sys

    import torch

    from serving.ray_serve import replica_app

    before = (torch.get_num_threads(), sys.getswitchinterval())
    try:
        app = replica_app(ServingSettings(torch_threads=2, gil_switch_interval_ms=0.7, token="t"))
        assert torch.get_num_threads() == 2 and abs(sys.getswitchinterval() - 0.0007) < 1e-9
        assert "/v1/score" in app.openapi()["paths"]
    finally:
        torch.set_num_threads(before[0])
        sys.setswitchinterval(before[1])
