"""Writes checkpoint A, then dies (SIGKILL, no cleanup) while writing checkpoint B over it.

    python tests/train/torn_checkpoint_run.py OUT WHEN    # WHEN: mid-write | between-renames

Run by tests/train/test_checkpoint_torn.py, which then loads OUT/last and expects A. Prints
`A {digest}` before it starts writing B.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from gflowgr_dist.config import EmbeddingConfig, SemanticIdConfig, SyntheticConfig, load_config
from gflowgr_dist.data.split import leave_one_out
from gflowgr_dist.data.synthetic import load_synthetic
from gflowgr_dist.semantic_ids import build_semantic_ids
from gflowgr_dist.train import checkpoint
from gflowgr_dist.train.sft import SftTrainer


def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def main(out: Path, when: str) -> None:
    cfg = load_config(
        overrides=[
            f"run.output_dir={out}", "data.max_history=8", "model.preset=tiny",
            "train.batch_size=32", "train.epochs=1", "logging.progress=false",
            "train.max_eval_users=8", "eval.beam_width=10", "eval.ks=[5, 10]",
        ]
    )  # fmt: skip
    dataset = load_synthetic(SyntheticConfig(num_users=40, num_items=30, num_clusters=3), 0)
    table, _ = build_semantic_ids(
        dataset, SemanticIdConfig(codebook_sizes=[4, 4]), EmbeddingConfig(encoder="hashing"), seed=0
    )
    trainer = SftTrainer(cfg, dataset, leave_one_out(dataset, 8), table, out)
    trainer.fit()  # writes out/last: checkpoint A
    print(f"A {checkpoint.weights_digest(trainer.model)}", flush=True)
    with torch.no_grad():  # checkpoint B differs from A
        for param in trainer.model.parameters():
            param.add_(1.0)
    if when == "mid-write":  # after the model files, before the rest
        trainer.table.save = die
    else:  # the old folder moved aside, the new one not yet in place
        real_rename = Path.rename

        def rename(self, target):
            if Path(target).name == "last" and not Path(target).exists():
                die()
            return real_rename(self, target)

        Path.rename = rename
    checkpoint.save(out / "last", trainer._bundle())
    print("B written: the kill did not happen", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
