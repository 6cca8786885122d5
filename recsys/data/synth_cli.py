"""`recsys data synth`: the planted build generator (recsys/data/synth.py) or, with
`--format taobao`, a raw Taobao UserBehavior log (recsys/data/synth_taobao.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recsys.config import ConfigError, parse_config, read_yaml
from recsys.data.synth import SynthConfig, generate


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`recsys data synth`: flags override the optional YAML config."""
    parser.description = "Generate a planted long-history CTR build directory (docs/SYNTH.md)."
    parser.add_argument("--config", type=Path, help="YAML with SynthConfig fields (configs/synth/*.yaml)")
    parser.add_argument("--users", type=int, help="number of users (num_users)")
    parser.add_argument("--max-len", type=int, help="maximum history length (max_length)")
    parser.add_argument("--min-len", type=int, help="minimum history length (min_length)")
    parser.add_argument("--median-len", type=float, help="median history length (length_median)")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--chunk-users", type=int, help="users generated and written per chunk")
    parser.add_argument("--output", type=Path, required=True, help="build directory to write")
    parser.add_argument("--format", choices=("planted", "taobao"), default="planted",
                        help="planted = this build directory; taobao = a raw UserBehavior log (recsys/data/synth_taobao.py)")
    parser.add_argument("--events", type=int, help="taobao: number of events")
    parser.add_argument("--file-format", choices=("csv", "parquet"), default="csv", help="taobao: output file format")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    if args.format == "taobao":
        from recsys.data.synth_taobao import cli_generate

        return cli_generate(args)
    data = read_yaml(args.config) if args.config else {}
    for flag, field in (("users", "num_users"), ("max_len", "max_length"), ("min_len", "min_length"),
                        ("median_len", "length_median"), ("seed", "seed"), ("chunk_users", "chunk_users")):
        value = getattr(args, flag)
        if value is not None:
            data[field] = value
    try:
        cfg = parse_config(data, SynthConfig, source=str(args.config or "recsys data synth"))
    except ConfigError as exc:
        print(f"recsys data synth: {exc}", file=sys.stderr)
        return 2
    manifest = generate(cfg, args.output)
    print(json.dumps({"output": str(args.output), "counts": manifest["counts"],
                      "length_stats": manifest["length_stats"]}, indent=1))
    return 0
