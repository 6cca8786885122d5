"""The `recsys` command line.

Sub-commands are plugins registered under the `recsys.commands` entry-point group in
pyproject.toml, so this module never imports `pipelines` or `serving` (imports only go
downwards). A name "data.build" becomes `recsys data build`; its value is a function
`configure(parser)` that adds arguments and sets `parser.set_defaults(func=handler)`, where
`handler(args) -> int | None` runs the command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from typing import Callable, Sequence

ENTRY_POINT_GROUP = "recsys.commands"
PROJECT_PACKAGES = ("recsys", "pipelines", "serving", "kernels", "attention")


def _registered_commands() -> dict[str, Callable[[argparse.ArgumentParser], None]]:
    """Load every registered command's configure function, keyed by dotted name."""
    return {ep.name: ep.load for ep in entry_points(group=ENTRY_POINT_GROUP)}  # type: ignore[misc]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): parser.add_subparsers(dest="command")}
    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): parser}
    for name, loader in sorted(_registered_commands().items()):
        path = tuple(name.split("."))
        for depth in range(1, len(path)):  # create intermediate groups such as `data`
            prefix = path[:depth]
            if prefix not in parsers:
                sub = groups[path[: depth - 1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands")
                parsers[prefix] = sub
                groups[prefix] = sub.add_subparsers(dest=f"command_{depth}")
            elif prefix not in groups:
                groups[prefix] = parsers[prefix].add_subparsers(dest=f"command_{depth}")
        leaf = groups[path[:-1]].add_parser(path[-1])
        parsers[path] = leaf
        try:
            configure = loader()
        except (ImportError, AttributeError) as exc:  # a broken/missing plugin stays visible, others work
            leaf.set_defaults(func=_unavailable(name, exc))
            continue
        configure(leaf)
    return parser


def _unavailable(name: str, exc: Exception) -> Callable[[argparse.Namespace], int]:
    def handler(_: argparse.Namespace) -> int:
        print(f"recsys {name.replace('.', ' ')}: unavailable ({exc})", file=sys.stderr)
        return 2

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Third-party libraries (fbgemm, ray) log chatter at INFO on the root logger: keep them at
    # WARNING and show INFO only for this project's packages.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for package in PROJECT_PACKAGES:
            logging.getLogger(package).setLevel(logging.INFO)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    result = func(args)
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
