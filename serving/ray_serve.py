"""The same FastAPI app as a Ray Serve deployment with N replicas.

Each replica builds its own app from the settings (`serve.ingress` with a builder, so models are
loaded on the replica, not pickled from the driver), sets the same process knobs as `recsys serve`
(torch threads, GIL switch interval: `ServingSettings.configure_process`), and keeps its own
in-process state cache;
replicas share the event log and the serialised per-user states through the Redis store, and a
replica whose cached state is behind (events arrived through another replica) catches up from the
user's store `version`. SQLite is refused for more than one replica: its file is local to one machine.
"""

from __future__ import annotations

import logging
import time

from serving.settings import ServingSettings

log = logging.getLogger(__name__)

APP_NAME = "recsys"


def replica_app(settings: ServingSettings):  # noqa: ANN201 - a FastAPI app
    """What one replica serves: the process knobs of `recsys serve` (a replica is its own process),
    then `create_app(settings)`."""
    from serving.app import create_app

    settings.configure_process()
    return create_app(settings)


def build_app(settings: ServingSettings):  # noqa: ANN201 - a Ray Serve application
    """A bound Ray Serve application serving `create_app(settings)` on every replica."""
    from ray import serve

    def builder():  # noqa: ANN202 - a plain function: Ray Serve calls it on each replica
        return replica_app(settings)

    @serve.deployment(name="scoring", ray_actor_options={"num_cpus": 0})
    @serve.ingress(builder)
    class Scoring:
        pass

    return Scoring


def deploy(settings: ServingSettings, replicas: int = 1, host: str = "127.0.0.1", port: int = 8000, *,
           ray_address: str | None = None) -> None:
    """Start (or connect to) Ray, start Serve's HTTP proxy on host:port and deploy `replicas`
    replicas; returns once they are running."""
    import ray
    from ray import serve

    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if replicas > 1 and not settings.store.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"store: {replicas} replicas need a shared Redis store (redis://...), got {settings.store!r}")
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    deployment = build_app(settings).options(num_replicas=replicas)
    serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", blocking=False)


def shutdown() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def run_ray(settings: ServingSettings, replicas: int, host: str, port: int) -> int:
    """`recsys serve --ray`: deploy, then block until interrupted."""
    deploy(settings, replicas, host, port)
    print(f"recsys serve: {replicas} Ray Serve replica(s) on http://{host}:{port} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown()
    return 0
