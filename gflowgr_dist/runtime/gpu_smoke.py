"""GPU smoke test of the vLLM rollout actor and both weight-sync routes (needs ≥ 2 GPUs).

    python -m gflowgr_dist.runtime.gpu_smoke [--route nccl|object_store|both] [--rounds 3]

Builds a tiny synthetic run in a temporary folder (no download), starts Ray with every GPU
but the last, keeps the last for the learner, and starts one vLLM rollout actor on one GPU.
Then, per round: move the learner's weights, sync them (one NCCL transfer, or one object-store
`load_weights`), and check that the engine's greedy semantic IDs under the trie equal the
learner's own greedy IDs (transformers + our decoding). Prints each route's sync seconds and
exits 0 only if every round matched. Runs in about two minutes, most of it vLLM start-up.

It needs Ray, vLLM (the `vllm` extra) and CUDA, none of which CI has: CI checks only that this
module imports without them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _trainer(out: Path, route: str):
    """A GflowgrTrainer on synthetic data with a tiny decoder (what the tests build)."""
    from gflowgr_dist.config import load_config
    from gflowgr_dist.data.split import leave_one_out
    from gflowgr_dist.data.synthetic import load_synthetic
    from gflowgr_dist.semantic_ids import build_semantic_ids
    from gflowgr_dist.train.gflowgr import GflowgrTrainer

    cfg = load_config(
        overrides=[
            f"run.output_dir={out}",
            "data.source=synthetic",
            "data.max_history=8",
            "embedding.encoder=hashing",
            "semantic_ids.codebook_sizes=[4, 4]",
            "model.preset=tiny",
            "gfn.reward.score=none",
            "gfn.sampler.weights_start={random: 0.5, on_policy: 0.5}",
            "gfn.sampler.weights_end={random: 0.5, on_policy: 0.5}",
            "runtime.engine=vllm",
            "runtime.rollout_gpus=1",
            f"runtime.weight_sync={route}",
            "logging.progress=false",
        ]
    )
    dataset = load_synthetic(cfg.data.synthetic, 0)
    table, _ = build_semantic_ids(dataset, cfg.semantic_ids, cfg.embedding, seed=0)
    splits = leave_one_out(dataset, cfg.data.max_history)
    return cfg, GflowgrTrainer(cfg, dataset, splits, table, out / "run")


def _learner_greedy(trainer, histories) -> np.ndarray:
    from gflowgr_dist.decoding import ItemRanker
    from gflowgr_dist.decoding.sampling import sample_sids

    ranker = ItemRanker(trainer.model.eval(), trainer.vocab, trainer.table)
    with torch.no_grad():
        codes = sample_sids(
            ranker.stepper, ranker.prompts(histories), ranker.trie, ranker.vocab,
            num_samples=1, temperature=0,
        )  # fmt: skip
    return codes[:, 0].numpy()


def run_route(route: str, rounds: int) -> bool:
    import ray

    from gflowgr_dist.runtime.rollout import VLLM_ENV, RolloutActor, RolloutSpec

    cfg, trainer = _trainer(Path(tempfile.mkdtemp(prefix="gflowgr-gpu-smoke-")), route)
    model = trainer.model
    spec = RolloutSpec(
        cfg, trainer.dataset, trainer.table, trainer.vocab, type(model), model.config,
        trainer.examples, None, trainer.seq2seq,
    )  # fmt: skip
    env = {k: v for k, v in VLLM_ENV.items() if not k.startswith("VLLM_CPU")}
    actor = (
        ray.remote(RolloutActor)
        .options(num_cpus=1, num_gpus=1, runtime_env={"env_vars": env})
        .remote(spec, "vllm-0", "vllm")
    )
    ray.get(actor.health.remote(), timeout=600)
    nccl = None
    if route == "nccl":
        from gflowgr_dist.runtime.weight_transfer_gpu import NcclWeightSync

        nccl = NcclWeightSync(model, {"vllm-0": actor}, master_port=cfg.runtime.nccl_port)
    histories = [w.items[: max(1, len(w.items) // 2)] for w in trainer.examples[:32]]
    ok = True
    for version in range(1, rounds + 1):
        # New learner weights, one sync, then greedy IDs on both sides.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        started = time.perf_counter()
        if nccl is not None:
            nccl.send(version)
        else:
            ray.get(actor.load_weights.remote(model.state_dict(), version), timeout=300)
        seconds = time.perf_counter() - started

        remote = ray.get(actor.greedy.remote(histories), timeout=300)
        local = _learner_greedy(trainer, histories)
        same = bool(np.array_equal(remote, local))
        ok &= same
        print(f"{route:<13} v{version}  sync {seconds:.4f} s  greedy equal: {same}", flush=True)
    ray.kill(actor, no_restart=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--route", choices=("nccl", "object_store", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"gpu_smoke: needs 2 GPUs (one learner, one rollout), found {gpus}", file=sys.stderr)
        return 2
    import ray

    torch.cuda.set_device(gpus - 1)  # the learner's GPU; Ray hands out the others
    ray.init(address="local", num_gpus=gpus - 1, include_dashboard=False)
    try:
        routes = ("object_store", "nccl") if args.route == "both" else (args.route,)
        results = {route: run_route(route, args.rounds) for route in routes}
    finally:
        ray.shutdown()
    print("PASS" if all(results.values()) else f"FAIL {results}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
