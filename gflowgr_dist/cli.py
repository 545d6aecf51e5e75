"""The `gflowgr` command line: one subcommand per pipeline stage, plus `run` for all of them.

    gflowgr run      --config configs/ml100k.yaml [--set key=value ...] [--dry-run]
    gflowgr prepare  ...   load + split the data into Parquet
    gflowgr tokenize ...   semantic IDs for the prepared items

Errors a user can cause (bad config, missing or malformed files) are printed as one message
without a traceback, and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gflowgr_dist.config import Config, load_config
from gflowgr_dist.errors import GflowgrError

logger = logging.getLogger("gflowgr_dist")


def _print_data(cfg: Config, stats: dict[str, Any]) -> None:
    from gflowgr_dist.data.stats import format_stats
    from gflowgr_dist.pipeline import data_dir

    print(f"== dataset: {cfg.data.source} -> {data_dir(cfg)}")
    print(format_stats(stats))


def _print_sids(cfg: Config, stats: dict[str, Any]) -> None:
    from gflowgr_dist.pipeline import format_sid_stats, sid_dir

    print(f"== semantic IDs: {cfg.semantic_ids.method} -> {sid_dir(cfg)}")
    print(format_sid_stats(stats))


def cmd_prepare(cfg: Config) -> None:
    from gflowgr_dist.pipeline import prepare

    _print_data(cfg, prepare(cfg))


def cmd_tokenize(cfg: Config) -> None:
    from gflowgr_dist.pipeline import tokenize

    _print_sids(cfg, tokenize(cfg))


def cmd_run(cfg: Config) -> None:
    from gflowgr_dist.pipeline import prepare, tokenize

    _print_data(cfg, prepare(cfg))
    _print_sids(cfg, tokenize(cfg))


COMMANDS: dict[str, tuple[Callable[[Config], None], str]] = {
    "run": (cmd_run, "run the whole pipeline (the README's main job)"),
    "prepare": (cmd_prepare, "load and split a dataset into Parquet"),
    "tokenize": (cmd_tokenize, "build semantic IDs for the prepared items"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gflowgr", description="GFlowNet fine-tuning of generative recommenders."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "--config",
            action="append",
            default=[],
            metavar="YAML",
            help="config file; repeat to overlay several (later ones win)",
        )
        cmd.add_argument(
            "--set",
            action="append",
            default=[],
            dest="overrides",
            metavar="KEY=VALUE",
            help="override one key, e.g. --set data.max_history=50 (applied after files)",
        )
        cmd.add_argument(
            "--dry-run", action="store_true", help="print the resolved config and stop"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            print(cfg.to_yaml(), end="")
            return 0
        logging.basicConfig(
            level=cfg.logging.level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
        COMMANDS[args.command][0](cfg)
    except GflowgrError as err:
        print(f"gflowgr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gflowgr {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
