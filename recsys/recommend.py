"""`recsys recommend RUN_DIR --user ID`: top-k items for a user of a trained next-item run.

It lives apart from recsys/retrieval.py (the index and the `Recommender`) because it loads the run
through recsys/experiment.py, which itself imports retrieval: keeping the command here leaves the
import graph without a cycle.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recsys.experiment import load_run
from recsys.retrieval import recommend


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.description = "Top-k items for a user from a trained next-item run (faiss index saved with it)."
    parser.add_argument("run_dir", type=Path, help="run/model directory written by training")
    parser.add_argument("--user", type=int, required=True, help="raw user id")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--exclude-seen", dest="exclude_seen", action="store_true", default=True,
                        help="drop items the user already interacted with (default)")
    parser.add_argument("--include-seen", dest="exclude_seen", action="store_false")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir)
    rec = recommend(run, args.user, args.k, args.exclude_seen)
    what = f"top-{args.k} for user {args.user} ({'seen items excluded' if args.exclude_seen else 'seen included'})"
    if args.json:
        print(json.dumps({"user": args.user, "k": args.k, "exclude_seen": args.exclude_seen,
                          "items": rec.item_ids, "scores": rec.scores}))
    else:
        print(what + ", score = inner product of user and item embeddings:")
        for rank, (item, score) in enumerate(zip(rec.item_ids, rec.scores), 1):
            print(f"{rank:3d}  item {item:>10d}  score {score:.4f}")
    return 0
