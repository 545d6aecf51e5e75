"""`gflowgr bench gfn-cost`: the cost of a GFlowGR step against an SFT step, side by side.

Both trainers start from the same checkpoint and take the same batches of training windows;
steps alternate (SFT, GFlowGR, SFT, ...) so machine load hits both alike. An epoch is the same
set of windows for both, so the ratio of mean step times is the ratio of epoch times (the
paper reports 2.1× for GFlowGR over SFT; paper.md §7).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from gflowgr_dist.config import Config
from gflowgr_dist.data.store import read_prepared
from gflowgr_dist.train import checkpoint
from gflowgr_dist.train.gflowgr import GflowgrTrainer
from gflowgr_dist.train.sft import SftTrainer, length_bucketed_batches


def bench_gfn_cost(cfg: Config, folder: Path, data: Path, *, steps: int = 10) -> dict[str, Any]:
    """Mean seconds per optimizer step of SFT and of GFlowGR (`cfg.gfn`) on the same batches."""
    from gflowgr_dist.train.cf import load_or_train_cf

    model, vocab, table, _ = checkpoint.load_model(folder)
    dataset, splits, _ = read_prepared(data)
    out = Path(folder).parent / "bench-gfn-cost"
    sft = SftTrainer(cfg, dataset, splits, table, out / "sft", model=model, vocab=vocab)
    cf = load_or_train_cf(cfg, dataset, splits)
    gfn = GflowgrTrainer(
        cfg,
        dataset,
        splits,
        table,
        out / "gfn",
        model=copy.deepcopy(model),
        vocab=vocab,
        cf_model=cf,
    )
    gfn.rng = np.random.default_rng(0)
    gfn.generator = None
    rng = np.random.default_rng(cfg.run.seed)
    batches = length_bucketed_batches(sft.lengths, cfg.train.batch_size, rng)[: steps + 1]
    times: dict[str, list[float]] = {"sft": [], "gfn": []}
    for index, members in enumerate(batches):
        # One step of each on the same windows; the first pair warms up and is not counted.
        for name, trainer in (("sft", sft), ("gfn", gfn)):
            started = time.perf_counter()
            _step(trainer, [trainer.examples[i] for i in members])
            if index:
                times[name].append(time.perf_counter() - started)
    sft_s, gfn_s = float(np.mean(times["sft"])), float(np.mean(times["gfn"]))
    return {
        "steps": steps,
        "sft_s_per_step": sft_s,
        "gfn_s_per_step": gfn_s,
        "ratio": gfn_s / sft_s,
        "algorithm": cfg.gfn.algorithm,
        "num_augmented": cfg.gfn.sampler.num_augmented,
    }


def _step(trainer: SftTrainer, chunk: list[Any]) -> None:
    loss, _ = trainer._loss(chunk)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()


def format_cost(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"SFT step                    {result['sft_s_per_step']:.3f} s",
            f"GFlowGR-{result['algorithm']} step (N={result['num_augmented']})"
            f"   {result['gfn_s_per_step']:.3f} s",
            f"GFlowGR / SFT epoch time    {result['ratio']:.2f}x  (paper: 2.1x)",
        ]
    )
