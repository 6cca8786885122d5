"""`recsys demo` (what `make demo` runs): the main job end to end on MovieLens-100K.

Steps, each printing where its output is:
  1. fetch MovieLens-100K (GroupLens, or the recbole wheel fallback) into the data cache;
  2. build sequences, vocabularies, eval negatives and CTR samples with the Ray Data pipeline;
  3. train SASRec (next-item), print full-ranking and sampled-100 metrics and one user's top-10;
  4. train SDIM and DARE on the CTR task (rating >= 4 = click), print AUC/GAUC/logloss;
  5. write the offline evaluation report (HTML + JSON + Markdown) over those runs;
  6. start the scoring API on the embedded SQLite store, send one score, one recommend and one
     events request, print the responses, and shut the server down cleanly.
Everything lives under one output folder (default ./runs/demo) so reruns resume or reuse it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from recsys.config import StrictModel, load_yaml, parse_config, read_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


class DemoConfig(StrictModel):
    """What the demo runs; defaults are the checked-in configs."""

    output_dir: Path = Path("runs/demo")
    data_config: Path = REPO_ROOT / "configs/data/ml-100k.yaml"
    next_item_experiment: Path = REPO_ROOT / "configs/experiments/sasrec_ml-100k.yaml"
    ctr_experiments: list[Path] = Field(default_factory=lambda: [
        REPO_ROOT / "configs/experiments/ctr_sdim_ml-100k.yaml",
        REPO_ROOT / "configs/experiments/ctr_dare_ml-100k.yaml",
    ])
    #: cap on each model's training time (minutes) so the demo stays a demo
    max_train_minutes: float = Field(2.0, gt=0)
    serve: bool = True
    report: bool = True


def format_table(result: dict[str, Any]) -> str:
    """One line per (split, protocol): every metric, with the protocol and dataset named (both as
    eval.json records them, recsys/eval/protocol.py)."""
    protocols = result.get("protocols", {})
    dataset = str(result.get("dataset", "?"))
    rows: dict[tuple[str, str], list[str]] = {}
    for key, value in sorted(result.items()):
        parts = key.split("/")
        if not isinstance(value, float) or len(parts) < 2 or parts[-1].endswith(("num_users", "num_samples")):
            continue
        split, proto, metric = (parts[0], parts[1], parts[2]) if len(parts) >= 3 else (parts[0], "ctr", parts[1])
        rows.setdefault((split, proto), []).append(f"{metric.upper()} {value:.4f}")
    lines = []
    for (split, proto), cells in sorted(rows.items(), key=lambda kv: (kv[0][0] != "test", kv[0])):
        desc = protocols.get(proto, proto)
        lines.append(f"  [{dataset} | {split} | {proto}: {desc}]\n    " + "  ".join(cells))
    return "\n".join(lines)


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _experiment(path: Path, build_dir: Path, runs_dir: Path, max_minutes: float) -> Any:
    from recsys.experiment import ExperimentConfig

    data = read_yaml(path)
    data["data"] = {"build_dir": str(build_dir)}
    data["output_dir"] = str(runs_dir)
    train = dict(data.get("train", {}))
    train["max_minutes"] = min(float(train.get("max_minutes", max_minutes)), max_minutes)
    data["train"] = train
    return parse_config(data, ExperimentConfig, source=str(path))


def fetch_and_build(cfg: DemoConfig) -> Path:
    from pipelines.build import build_ray, load_build_config, manifest_summary
    from recsys.data.fetch import fetch_ml_100k

    _banner("1. fetch MovieLens-100K")
    path = fetch_ml_100k()
    print(f"data file: {path}")
    _banner("2. build sequences + samples (Ray Data)")
    build_cfg = load_build_config(cfg.data_config)
    out = cfg.output_dir / "build"
    manifest = build_ray(build_cfg, out)
    print(manifest_summary(manifest))
    print(f"build directory: {out}\nmanifest: {out / 'manifest.json'}\nrejects: {out / 'rejects'}/")
    return out


def train_next_item(cfg: DemoConfig, build_dir: Path) -> Path:
    from recsys.experiment import load_run, run_experiment
    from recsys.retrieval import Recommender

    _banner("3. train SASRec (next-item, leave-one-out)")
    exp = _experiment(cfg.next_item_experiment, build_dir, cfg.output_dir / "runs", cfg.max_train_minutes)
    run_dir = run_experiment(exp)
    result = json.loads((run_dir / "eval.json").read_text())
    print(format_table(result))
    run = load_run(run_dir)
    recommender = Recommender(run)
    user = int(run.vocabs["users"].decode(recommender.sequences.user_ids[:1])[0])
    rec = recommender.recommend(user, k=10, exclude_seen=True)
    print(f"top-10 for user {user} (seen items excluded): " +
          ", ".join(f"{i} ({s:.2f})" for i, s in zip(rec.item_ids, rec.scores)))
    print(f"model directory: {run_dir}")
    return run_dir


def train_ctr(cfg: DemoConfig, build_dir: Path) -> list[Path]:
    from recsys.experiment import run_experiment

    runs = []
    for path in cfg.ctr_experiments:
        exp = _experiment(path, build_dir, cfg.output_dir / "runs", cfg.max_train_minutes)
        _banner(f"4. train {exp.model.name.upper()} (CTR, rating >= 4 = click)")
        run_dir = run_experiment(exp)
        print(format_table(json.loads((run_dir / "eval.json").read_text())))
        print(f"model directory: {run_dir}")
        runs.append(run_dir)
    return runs


def write_report(cfg: DemoConfig, run_dirs: list[Path]) -> Path:
    from pipelines.report import build_report

    _banner("5. offline evaluation report")
    out = cfg.output_dir / "report"
    paths = build_report(run_dirs, out)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_and_call(cfg: DemoConfig, ctr_run: Path, next_item_run: Path) -> None:
    import httpx

    _banner("6. scoring API (embedded SQLite store)")
    port = _free_port()
    token = "demo-token"
    store = cfg.output_dir / "state.sqlite"
    cmd = [sys.executable, "-m", "recsys.cli", "serve", str(ctr_run), "--retrieval-model", str(next_item_run),
           "--store", f"sqlite:{store}", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "RECSYS_SERVING_TOKEN": token}
    print("starting: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30.0) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not become ready (exit code {proc.poll()})")
                time.sleep(0.5)
            from recsys.experiment import load_run

            run = load_run(ctr_run)
            user = int(run.vocabs["users"].decode([1])[0])
            items = [int(i) for i in run.vocabs["items"].decode(list(range(1, 6)))]
            calls = [
                ("POST /v1/score", client.post("/v1/score", json={"user_id": user, "candidates": items})),
                ("POST /v1/recommend", client.post("/v1/recommend", json={"user_id": user, "k": 5, "exclude_seen": True})),
                ("POST /v1/events", client.post(
                    "/v1/events", headers={"Authorization": f"Bearer {token}"},
                    json={"events": [{"user_id": user, "item_id": items[0], "timestamp": int(time.time()),
                                      "event_id": f"demo-{user}-{int(time.time())}"}]})),
            ]
            for name, resp in calls:
                print(f"{name} -> {resp.status_code}\n{json.dumps(resp.json(), indent=1)[:1500]}")
                if resp.status_code >= 400:
                    raise RuntimeError(f"{name} failed with {resp.status_code}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
            # uvicorn re-raises the SIGTERM it handled after its graceful shutdown: -15 is a clean stop
            clean = code in (0, -signal.SIGTERM)
            print(f"server stopped {'cleanly' if clean else 'with an error'} (exit code {code})")
        except subprocess.TimeoutExpired:
            proc.kill()
            print("server did not stop within 30 s; killed")


def run_demo(cfg: DemoConfig) -> int:
    t0 = time.perf_counter()
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    build_dir = fetch_and_build(cfg)
    next_item_run = train_next_item(cfg, build_dir)
    ctr_runs = train_ctr(cfg, build_dir)
    report_dir = write_report(cfg, [next_item_run, *ctr_runs]) if cfg.report else None
    if cfg.serve and ctr_runs:
        serve_and_call(cfg, ctr_runs[0], next_item_run)
    _banner(f"done in {time.perf_counter() - t0:.0f}s — outputs")
    print(f"build:        {build_dir}")
    print(f"next-item:    {next_item_run}")
    for r in ctr_runs:
        print(f"ctr:          {r}")
    if report_dir is not None:
        print(f"report:       {report_dir / 'report.html'}")
    return 0


def _handler(args: argparse.Namespace) -> int:
    cfg = load_yaml(args.config, DemoConfig) if args.config else DemoConfig()
    if args.output:
        cfg.output_dir = Path(args.output)
    if args.max_train_minutes:
        cfg.max_train_minutes = args.max_train_minutes
    return run_demo(cfg)


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.description = "Run the main job end to end on MovieLens-100K (what `make demo` runs)."
    parser.add_argument("--config", type=Path, default=None, help="YAML DemoConfig (optional)")
    parser.add_argument("--output", type=Path, default=None, help="output folder (default runs/demo)")
    parser.add_argument("--max-train-minutes", type=float, default=None)
    parser.set_defaults(func=_handler)
