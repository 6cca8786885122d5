"""`recsys serve MODEL_DIR [--ctr-model DIR] [--retrieval-model DIR] [--host H --port P]
[--store sqlite:PATH|redis://...] [--config configs/serving.yaml] [--ray --replicas N]`.

MODEL_DIR is a run directory; its task (config.yaml) says whether it is the CTR model or the
retrieval (next-item) model. The store is bootstrapped from the CTR model's build
(its `sequences/` parts) unless --no-bootstrap; users that already have events are left alone.
Write/admin endpoints need a bearer token: --config `token`, or $RECSYS_SERVING_TOKEN; if neither
is set a random token is generated and printed once at start-up.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from pathlib import Path
from typing import Any, Sequence

from recsys.config import load_yaml
from recsys.experiment import ExperimentConfig
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


def run_config(model_dir: Path) -> ExperimentConfig:
    """The run directory's config.yaml, validated as the experiment config it was trained with."""
    cfg = model_dir / "config.yaml"
    if not cfg.is_file():
        raise SystemExit(f"recsys serve: {model_dir} is not a run directory (no config.yaml)")
    try:
        return load_yaml(cfg, ExperimentConfig)
    except ValueError as exc:  # ConfigError names the field
        raise SystemExit(f"recsys serve: {cfg} is not a valid run config: {exc}") from None


def run_task(model_dir: Path) -> str:
    """The task ('ctr' or 'next_item') of a run directory."""
    return run_config(model_dir).task


def build_dir_of(model_dir: Path) -> Path | None:
    """The build the run was trained on, when it is still there (its manifest.json: bootstrap)."""
    path = Path(run_config(model_dir).data.build_dir)
    return path if (path / "manifest.json").is_file() else None


def settings_from_args(args: argparse.Namespace) -> ServingSettings:
    base = load_yaml(args.config, ServingSettings) if args.config else ServingSettings()
    update: dict[str, Any] = {}
    model_dir = Path(args.model_dir)
    if run_task(model_dir) == "ctr":
        update["ctr_model_dir"] = model_dir
    else:
        update["retrieval_model_dir"] = model_dir
    if args.ctr_model:
        update["ctr_model_dir"] = Path(args.ctr_model)
    if args.retrieval_model:
        update["retrieval_model_dir"] = Path(args.retrieval_model)
    if update.get("ctr_model_dir") is None and base.ctr_model_dir is None:
        raise SystemExit("recsys serve: a CTR model is required (MODEL_DIR of task ctr, or --ctr-model DIR)")
    if args.store:
        update["store"] = args.store
    if args.device:
        update["device"] = args.device
    ctr_dir = update.get("ctr_model_dir") or base.ctr_model_dir
    if args.bootstrap:
        update["bootstrap_build_dir"] = Path(args.bootstrap)
    elif not args.no_bootstrap and base.bootstrap_build_dir is None and ctr_dir is not None:
        update["bootstrap_build_dir"] = build_dir_of(Path(ctr_dir))
    settings = base.model_copy(update=update)
    if settings.resolved_token() is None:
        token = secrets.token_urlsafe(24)
        print(f"recsys serve: no token configured (config `token` or ${settings.token_env}); generated one for this run: {token}",
              file=sys.stderr, flush=True)
        settings = settings.model_copy(update={"token": token})
    return settings


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("model_dir", help="run directory of the CTR model (or of the retrieval model, with --ctr-model)")
    parser.add_argument("--ctr-model", help="CTR run directory (din/twin/dare/sdim)")
    parser.add_argument("--retrieval-model", help="next-item run directory with index.faiss (sasrec/mqsa_ted) for /v1/recommend")
    parser.add_argument("--config", help="serving settings YAML (configs/serving.yaml)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--store", help="sqlite:PATH (default sqlite:serving_state.sqlite3) or redis://host:port/db")
    parser.add_argument("--bootstrap", help="build directory whose sequences seed the store (default: the CTR model's build)")
    parser.add_argument("--no-bootstrap", action="store_true", help="do not seed the store")
    parser.add_argument("--ray", action="store_true", help="serve with Ray Serve (replicas share a Redis store)")
    parser.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")
    parser.add_argument("--device", help="cpu (default) or cuda[:N]: where the CTR model and per-user states live")
    parser.add_argument("--log-level", default="warning")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.ray:
        from serving.ray_serve import run_ray

        return run_ray(settings, replicas=args.replicas, host=args.host, port=args.port)
    import uvicorn

    from serving.app import create_app

    settings.configure_process()
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=5, access_log=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m serving.cli MODEL_DIR ...` (the same as `recsys serve`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="recsys serve")
    configure_cli(parser)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
