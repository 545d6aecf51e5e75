"""One run of the driver in its own process, for tests/runtime/test_driver_kill.py to SIGKILL.

    python tests/runtime/driver_kill_run.py OUT MODE      # MODE: reference | run | resume

- reference: the single-process trainer, start to end (the distributed S = 0 run equals it);
- run: the distributed run with a checkpoint after every learner step, printing `STEP n` after
  each step (the test kills the process group at a random one);
- resume: `--resume` from whatever the kill left under OUT, to the end.
Prints one `RESULT {json}` line: losses, the example ids the training cursor consumed (for
resume: those in the checkpoint, then those after it) and a digest of the final weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
import torch

from gflowgr_dist.config import EmbeddingConfig, SemanticIdConfig, SyntheticConfig, load_config
from gflowgr_dist.data.split import leave_one_out
from gflowgr_dist.data.synthetic import load_synthetic
from gflowgr_dist.runtime.driver import Cursor, run_distributed
from gflowgr_dist.semantic_ids import build_semantic_ids
from gflowgr_dist.tracking import read_metrics
from gflowgr_dist.train import checkpoint
from gflowgr_dist.train.gflowgr import GflowgrTrainer


def config(out: Path):
    return load_config(
        overrides=[
            f"run.output_dir={out}", "data.max_history=8", "model.preset=tiny",
            "model.dropout=0.0", "train.batch_size=16", "train.lr=3e-3", "train.epochs=1",
            "train.log_every=1",
            "train.num_threads=1", "train.max_eval_users=8", "eval.beam_width=10",
            "eval.ks=[5, 10]", "gfn.calibration_users=8", "gfn.sampler.num_augmented=3",
            "gfn.sampler.weights_start={random: 0.5, on_policy: 0.5}",
            "gfn.sampler.weights_end={random: 0.5, on_policy: 0.5}",
            "gfn.reward.score=none", "logging.progress=false", "runtime.actor_cpus=0.25",
            "runtime.checkpoint_every=1",
        ]
    )  # fmt: skip


def trainer_for(cfg, out: Path) -> GflowgrTrainer:
    dataset = load_synthetic(SyntheticConfig(num_users=60, num_items=40, num_clusters=4), 0)
    table, _ = build_semantic_ids(
        dataset, SemanticIdConfig(codebook_sizes=[4, 4]), EmbeddingConfig(encoder="hashing"), seed=0
    )
    return GflowgrTrainer(cfg, dataset, leave_one_out(dataset, 8), table, out)


def main(out: Path, mode: str) -> dict:
    torch.set_num_threads(1)
    cfg = config(out)
    trainer = trainer_for(cfg, out / mode if mode == "reference" else out / "run")
    if mode == "reference":
        trainer.fit()
        metrics = read_metrics(out / "reference/metrics.jsonl")
        losses = [r["gfn/loss"] for r in metrics if "gfn/loss" in r]
        ids = sorted(int(i) for b in trainer.epoch_batches(0) for i in b)
        return {"losses": losses, "ids": ids, "digest": checkpoint.weights_digest(trainer.model)}
    before: list[int] = []
    if mode == "resume":  # what the checkpoint's cursor says was consumed before the kill
        last = checkpoint.recover(out / "run" / "last")
        state = torch.load(last / "trainer_state.pt", weights_only=True)["state"]
        before = list(Cursor.from_json(state["runtime"]).consumed_ids)

    def announce(run, step: int) -> None:
        print(f"STEP {step}", flush=True)

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        result = run_distributed(
            cfg, out / "run", trainer=trainer, resume=mode == "resume", on_step=announce
        )
    finally:
        ray.shutdown()
    after = [int(i) for i in result.consumed_ids.get(0, [])]
    return {
        "losses": result.losses,
        "ids": before + after,
        "digest": checkpoint.weights_digest(trainer.model),
    }


if __name__ == "__main__":
    summary = main(Path(sys.argv[1]), sys.argv[2])
    print("RESULT " + json.dumps(summary), flush=True)
