"""`gflowgr bench gfn-cost`: the cost of a GFlowGR step against an SFT step, side by side.

Both trainers start from the same checkpoint and take the same batches of training windows;
steps alternate (SFT, GFlowGR, SFT, ...) so machine load hits both alike. An epoch is the same
set of windows for both, so the ratio of mean step times is the ratio of epoch times (the
paper reports 2.1× for GFlowGR over SFT; paper.md §7). Each GFlowGR step is split into sampling
(the rollout stage: CF scores, on-policy samples) and learner time (scoring, loss, backward).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from gflowgr_dist.config import Config, apply_overrides
from gflowgr_dist.data.store import read_prepared
from gflowgr_dist.train import checkpoint
from gflowgr_dist.train.gflowgr import GflowgrTrainer
from gflowgr_dist.train.sft import SftTrainer, length_bucketed_batches


def bench_gfn_cost(cfg: Config, folder: Path, data: Path, *, steps: int = 10) -> dict[str, Any]:
    """Mean seconds per optimizer step of SFT and of GFlowGR (`cfg.gfn`) on the same batches.

    With `gfn.targets_per_window = k` set, GFlowGR is measured twice in the same run: with
    trajectories for every target of a window (the paper's setting) and for k of them.
    """
    from gflowgr_dist.train.cf import load_or_train_cf

    model, vocab, table, _ = checkpoint.load_model(folder)
    dataset, splits, _ = read_prepared(data)
    out = Path(folder).parent / "bench-gfn-cost"
    sft = SftTrainer(cfg, dataset, splits, table, out / "sft", model=model, vocab=vocab)
    cf = load_or_train_cf(cfg, dataset, splits)
    variants = {"every": apply_overrides(cfg, ["gfn.targets_per_window=null"])}
    if cfg.gfn.targets_per_window is not None:
        variants["subset"] = cfg
    trainers: dict[str, SftTrainer] = {"sft": sft}
    for name, variant in variants.items():
        gfn = GflowgrTrainer(
            variant,
            dataset,
            splits,
            table,
            out / name,
            model=copy.deepcopy(model),
            vocab=vocab,
            cf_model=cf,
        )
        gfn.rng, gfn.generator = np.random.default_rng(0), None
        trainers[name] = gfn
    rng = np.random.default_rng(cfg.run.seed)
    batches = length_bucketed_batches(sft.lengths, cfg.train.batch_size, rng)[: steps + 1]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in trainers}
    for index, members in enumerate(batches):
        # One step of each on the same windows; the first round warms up and is not counted.
        for name, trainer in trainers.items():
            timed = _step(trainer, [trainer.examples[i] for i in members])
            if index:
                times[name].append(timed)
    sft_s = float(np.mean([sum(t) for t in times["sft"]]))
    rows = {}
    for name in variants:
        sample_s, learn_s = (float(x) for x in np.mean(times[name], axis=0))
        rows[name] = {
            "targets_per_window": variants[name].gfn.targets_per_window,
            "s_per_step": sample_s + learn_s,
            "sample_s": sample_s,
            "learn_s": learn_s,
            "ratio": (sample_s + learn_s) / sft_s,
        }
    return {
        "steps": steps,
        "sft_s_per_step": sft_s,
        "gfn_s_per_step": rows["every"]["s_per_step"],
        "ratio": rows["every"]["ratio"],
        "variants": rows,
        "algorithm": cfg.gfn.algorithm,
        "num_augmented": cfg.gfn.sampler.num_augmented,
    }


def _step(trainer: SftTrainer, chunk: list[Any]) -> tuple[float, float]:
    """(sampling seconds, learner seconds) of one optimizer step; SFT samples nothing."""
    started = time.perf_counter()
    if isinstance(trainer, GflowgrTrainer):
        ids = np.arange(len(chunk))
        batch = trainer.source.build(chunk, ids, 0.0, trainer.rng, trainer.generator)
        sampled = time.perf_counter()
        loss, _ = trainer.learner_loss(chunk, batch)
    else:
        sampled = started
        loss, _ = trainer._loss(chunk)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    return sampled - started, time.perf_counter() - sampled


def format_cost(result: dict[str, Any]) -> str:
    name = f"GFlowGR-{result['algorithm']} step (N={result['num_augmented']}"
    lines = [f"{'SFT step':<44}{result['sft_s_per_step']:7.3f} s"]
    for row in result["variants"].values():
        k = row["targets_per_window"]
        label = f"{name}, {'every target' if k is None else f'{k} target / window'})"
        lines.append(
            f"{label:<44}{row['s_per_step']:7.3f} s  (sampling {row['sample_s']:.3f} s, "
            f"learner {row['learn_s']:.3f} s)  {row['ratio']:.2f}x"
        )
    lines.append(f"{'GFlowGR / SFT epoch time':<44}{result['ratio']:7.2f}x  (paper: 2.1x)")
    if "subset" in result["variants"]:
        subset = result["variants"]["subset"]
        lines.append(
            f"{'  with ' + str(subset['targets_per_window']) + ' target / window':<44}"
            f"{subset['ratio']:7.2f}x  (aim: 1.5x)"
        )
    return "\n".join(lines)
