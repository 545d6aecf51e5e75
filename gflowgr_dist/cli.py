"""The `gflowgr` command line: one subcommand per pipeline stage, plus `run` for all of them.

    gflowgr run      --config configs/ml100k.yaml [--set key=value ...] [--dry-run]
                     prepare → tokenize → SFT → test (→ GFlowGR fine-tune when run.finetune)
    gflowgr prepare  ...   load + split the data into Parquet
    gflowgr tokenize ...   semantic IDs for the prepared items
    gflowgr sft      ...   train the backbone (SFT) and evaluate it on test
    gflowgr evaluate ...   full-ranking evaluation of a checkpoint
    gflowgr train    ...   GFlowGR fine-tuning (gfn.algorithm: tb, db, subtb, dpo, sdpo, grpo)
    gflowgr table / matrix  results over seeds; gflowgr report: Markdown + plots from them
    gflowgr bench decode   our beam search vs transformers generate, and vs exact scoring
    gflowgr bench runtime  the Ray runtime (S = 0 and async) vs the single-process trainer
    gflowgr report   --dir outputs/ml100k-gfn   Markdown table with p-values, and PNG plots

Errors a user can cause (bad config, missing or malformed files) are printed as one message
without a traceback, and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gflowgr_dist.config import Config, apply_overrides, load_config
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


def cmd_prepare(cfg: Config, args: argparse.Namespace) -> None:
    from gflowgr_dist.pipeline import prepare

    _print_data(cfg, prepare(cfg))


def cmd_tokenize(cfg: Config, args: argparse.Namespace) -> None:
    from gflowgr_dist.pipeline import tokenize

    _print_sids(cfg, tokenize(cfg))


def _print_sft(
    cfg: Config, summary: dict[str, Any], reference: dict[str, Any] | None = None
) -> None:
    from gflowgr_dist.eval.evaluate import format_header, format_row
    from gflowgr_dist.pipeline import sft_dir

    train = summary["train"]
    print(f"== SFT {cfg.model.arch} -> {sft_dir(cfg)}")
    print(
        f"parameters {train['parameters']:,}; {train['epochs']} epochs at "
        f"{train['seconds_per_epoch']:.1f}s; best val NDCG@10 {train['best_val_ndcg@10']:.4f} "
        f"(epoch {train['best_epoch']})"
    )
    print(f"== test: full ranking, {cfg.eval.ranker} search (width {cfg.eval.beam_width})")
    print(format_header())
    if reference is not None:
        print(format_row("pop", reference))
    print(format_row(f"sft-{cfg.model.arch}", summary["test"]))


def cmd_sft(cfg: Config, args: argparse.Namespace) -> None:
    from gflowgr_dist.pipeline import sft

    _print_sft(cfg, sft(cfg, resume=args.resume))


def cmd_run(cfg: Config, args: argparse.Namespace) -> None:
    from gflowgr_dist.experiments.sft_table import run_cell
    from gflowgr_dist.pipeline import prepare, sft, tokenize

    # The fine-tuning stage's config is resolved first, so a bad override stops before any work.
    finetune_cfg = apply_overrides(cfg, cfg.run.finetune_overrides) if cfg.run.finetune else None
    _print_data(cfg, prepare(cfg))
    _print_sids(cfg, tokenize(cfg))
    summary = sft(cfg, resume=args.resume)
    pop = run_cell(cfg, "pop")
    _print_sft(cfg, summary, reference=pop)
    if finetune_cfg is not None:
        from gflowgr_dist.pipeline import gfn_dir

        ray = finetune_cfg.runtime.enabled
        _finetune(finetune_cfg, gfn_dir(finetune_cfg), resume=args.resume, ray=ray)


def _finetune(cfg: Config, out: Path, *, resume: bool, ray: bool) -> dict[str, Any]:
    """GFlowGR (or a baseline) from the run's SFT checkpoint, on Ray or in this process."""
    from gflowgr_dist.pipeline import gflowgr

    if ray:
        from gflowgr_dist.runtime.driver import train_ray

        summary = train_ray(cfg, out, resume=resume)
        rt = cfg.runtime
        where = (
            f"Ray: {rt.num_rollout_actors} rollout ({rt.engine}) + {rt.num_reward_actors} "
            f"reward actor(s), S={rt.max_staleness}"
        )
    else:
        summary = gflowgr(cfg, out=out, resume=resume)
        where = "one process"
    _print_finetune(cfg, out, summary, where)
    return summary


def _print_finetune(cfg: Config, out: Path, summary: dict[str, Any], where: str) -> None:
    from gflowgr_dist.eval.evaluate import format_header, format_row

    train = summary["train"]
    print(f"== GFlowGR ({cfg.gfn.algorithm}, λ={cfg.gfn.lam}) on {where} -> {out}")
    print(
        f"{train['steps']} steps, {train['epochs']} epochs at {train['seconds_per_epoch']:.1f}s; "
        f"best val NDCG@10 {train['best_val_ndcg@10']:.4f} (epoch {train['best_epoch']}); "
        f"test calibration {summary['test']['calibration']:.3f}"
    )
    if "runtime" in summary:
        rt = summary["runtime"]
        print(
            f"runtime: {rt['admitted']} batches admitted, {rt['dropped']} dropped as stale, "
            f"max staleness {rt['staleness_max']}, restarts {sum(rt['restarts'].values())}"
        )
    print(format_header())
    print(format_row(f"gfn-{cfg.gfn.algorithm}", summary["test"]))


def cmd_evaluate(cfg: Config, args: argparse.Namespace) -> None:
    from gflowgr_dist.eval.evaluate import format_header, format_row
    from gflowgr_dist.pipeline import evaluate_checkpoint, sft_dir

    folder = args.checkpoint or sft_dir(cfg) / "best"
    summary = evaluate_checkpoint(cfg, folder, split=args.split)
    print(f"== {args.split} ({cfg.eval.ranker}, beam {cfg.eval.beam_width}) of {folder}")
    print(format_header())
    print(format_row(Path(folder).parent.name, summary))


def cmd_bench(cfg: Config, args: argparse.Namespace) -> None:
    from gflowgr_dist.bench.decode import bench_decode, format_bench
    from gflowgr_dist.pipeline import data_dir, sft_dir

    folder = args.checkpoint or sft_dir(cfg) / "best"
    if args.what == "runtime":
        from gflowgr_dist.bench.runtime import bench_runtime, format_runtime

        if args.checkpoint:
            cfg = cfg.model_copy(
                update={"gfn": cfg.gfn.model_copy(update={"init_checkpoint": folder})}
            )
        engines = tuple(args.engines.split(","))
        result = bench_runtime(
            cfg, folder.parent / "bench-runtime", steps=args.steps, staleness=args.staleness,
            engines=engines,
        )  # fmt: skip
        print(f"== bench runtime: {folder}, {result['steps']} timed learner steps per mode")
        print(format_runtime(result))
        return
    if args.what == "gfn-cost":
        from gflowgr_dist.bench.gfn_cost import bench_gfn_cost, format_cost

        cost = bench_gfn_cost(cfg, folder, data_dir(cfg), steps=args.steps)
        print(f"== bench gfn-cost: {folder}, {cost['steps']} steps each, alternating")
        print(format_cost(cost))
        return
    result = bench_decode(
        folder,
        data_dir(cfg),
        users=args.users,
        beam_width=cfg.eval.beam_width,
        batch_size=args.batch_size,
        with_exact=not args.no_exact,
        seed=cfg.run.seed,
    )
    print(f"== bench decode: {folder}")
    print(format_bench(result))


def cmd_train(cfg: Config, args: argparse.Namespace) -> None:
    from gflowgr_dist.pipeline import gfn_dir

    out = cfg.run.output_dir / args.name if args.name else gfn_dir(cfg)
    _finetune(cfg, out, resume=args.resume, ray=args.runtime == "ray" or cfg.runtime.enabled)


def cmd_table(cfg: Config, args: argparse.Namespace) -> None:
    from gflowgr_dist.experiments.sft_table import markdown_table, run_table

    results = run_table(cfg, run_missing=not args.aggregate_only)
    print(f"== {cfg.run.name}: test, mean ± std over seeds {cfg.experiment.seeds}")
    print(markdown_table(results["aggregate"]))
    print(f"(per-seed results in {cfg.run.output_dir / 'results.json'})")


def cmd_report(cfg: Config, args: argparse.Namespace) -> None:
    from gflowgr_dist.experiments.report import build_report

    folder = args.dir if args.dir is not None else cfg.run.output_dir
    report = build_report(folder, baseline=args.baseline)
    print(f"== report: {folder}, test, mean ± std over seeds; p vs {args.baseline}")
    print(report["markdown"])
    names = ", ".join(path.name for path in report["paths"].values())
    print(f"(written to {report['out_dir']}: {names})")


COMMANDS: dict[str, tuple[Callable[..., None], str]] = {
    "run": (cmd_run, "run the whole pipeline (the README's main job)"),
    "prepare": (cmd_prepare, "load and split a dataset into Parquet"),
    "tokenize": (cmd_tokenize, "build semantic IDs for the prepared items"),
    "sft": (cmd_sft, "train the backbone with SFT and evaluate it on test"),
    "evaluate": (cmd_evaluate, "full-ranking evaluation of a checkpoint"),
    "train": (cmd_train, "GFlowGR fine-tuning (or DPO/S-DPO/GRPO) from the SFT checkpoint"),
    "matrix": (cmd_table, "the experiment matrix: the table runner with GFlowGR rows"),
    "table": (cmd_table, "baseline table: pop, SASRec, SFT decoder and T5 over seeds"),
    "report": (cmd_report, "results table with paired-bootstrap p-values, and plots"),
    "bench": (
        cmd_bench,
        "benchmarks: decode (beam vs generate), gfn-cost, runtime (Ray vs one process)",
    ),
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
        _command_arguments(name, cmd)
    return parser


def _command_arguments(name: str, cmd: argparse.ArgumentParser) -> None:
    if name in ("run", "sft", "train"):
        cmd.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    if name == "train":
        cmd.add_argument(
            "--name", default=None, help="run folder under run.output_dir (default gfn-<algo>)"
        )
        cmd.add_argument(
            "--runtime",
            choices=("local", "ray"),
            default="local",
            help="local: one process; ray: the actor-learner runtime (config section runtime)",
        )
    if name in ("evaluate", "bench"):
        cmd.add_argument(
            "--checkpoint", type=Path, default=None, help="checkpoint folder (default: best SFT)"
        )
    if name == "evaluate":
        cmd.add_argument("--split", choices=("valid", "test"), default="test")
    if name in ("table", "matrix"):
        cmd.add_argument(
            "--aggregate-only", action="store_true", help="aggregate finished cells, run none"
        )
    if name == "report":
        cmd.add_argument(
            "--dir", type=Path, default=None, help="experiment folder (default: run.output_dir)"
        )
        cmd.add_argument(
            "--baseline", default="sft-decoder", metavar="NAME", help="row p is tested against"
        )
    if name == "bench":
        cmd.add_argument("what", choices=("decode", "gfn-cost", "runtime"), help="which benchmark")
        cmd.add_argument(
            "--steps", type=_positive, default=10, help="gfn-cost / runtime: timed steps"
        )
        cmd.add_argument(
            "--staleness", type=_positive, default=1, help="runtime: S of the async mode"
        )
        cmd.add_argument(
            "--engines",
            default="hf",
            help="runtime: rollout engines to measure, comma-separated (hf, vllm)",
        )
        cmd.add_argument("--users", type=_positive, default=200, help="test users to decode")
        cmd.add_argument("--batch-size", type=_positive, default=16)
        cmd.add_argument("--no-exact", action="store_true", help="skip exact scoring")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _quiet_hf_progress_bars() -> None:
    """`logging.progress: false` also silences transformers' own bars (checkpoint save / load),
    here and in the Ray workers this process starts (they inherit the environment)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


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
        if not cfg.logging.progress:
            _quiet_hf_progress_bars()
        if cfg.train.num_threads:
            import torch

            torch.set_num_threads(cfg.train.num_threads)
        COMMANDS[args.command][0](cfg, args)
    except GflowgrError as err:
        print(f"gflowgr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gflowgr {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
