"""A LoRA learner on Ray (gfn.lora_rank, runtime.lora_sync: adapter): after the first sync only
the adapter travels, and a rollout actor killed mid-run gets the base weights and then the
latest adapter before it serves again: with S = 0 and stream seeding the losses still equal the
single-process LoRA run's (on-policy samples depend on the adapter, so a restarted actor that
missed either load would change them)."""

from __future__ import annotations

import numpy as np
import torch

from gflowgr_dist.models import lora
from gflowgr_dist.runtime.driver import run_distributed

LORA = ("gfn.lora_rank=4", "gfn.lora_alpha=8")


def _bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def test_adapter_syncs_reproduce_the_single_process_lora_run_through_a_restart(
    ray_cluster, runtime_cfg, make_trainer, fit_single, tmp_path
):
    ray = ray_cluster
    torch.set_num_threads(1)
    cfg = runtime_cfg(tmp_path, *LORA)
    expected = fit_single(make_trainer(cfg, tmp_path / "single"))

    trainer = make_trainer(cfg, tmp_path / "dist")
    full, adapter = _bytes(trainer.model.state_dict()), _bytes(lora.adapter_state(trainer.model))
    seen = {}

    def on_step(run, step):
        if step == 1:  # the start's full sync, then one adapter-only sync
            seen["bytes"] = run.totals["sync_bytes"]
        if step == 2:
            handle = run.rollouts["rollout-0"]
            seen["weights"] = ray.get(handle.weights.remote(), timeout=120)
            seen["learner"] = {k: v.clone() for k, v in run.learner.state_dict().items()}
            ray.kill(handle, no_restart=False)

    result = run_distributed(cfg, tmp_path / "dist", trainer=trainer, on_step=on_step)

    assert adapter < 0.5 * full
    assert seen["bytes"] == full + adapter
    # After step 2's adapter-only sync the actor holds exactly the learner's weights.
    assert set(seen["weights"]) == set(seen["learner"])
    assert all(torch.equal(seen["weights"][k], seen["learner"][k]) for k in seen["learner"])
    assert result.restarts["rollout-0"] == 1
    assert len(result.losses) == len(expected) >= 4
    np.testing.assert_allclose(result.losses, expected, rtol=1e-6, atol=0)


def test_merged_syncs_ship_plain_weights_that_compute_the_learner(
    runtime_cfg, make_trainer, tmp_path
):
    from gflowgr_dist.runtime.learner import Learner

    adapter_cfg = runtime_cfg(tmp_path, *LORA)
    learner = Learner(make_trainer(adapter_cfg, tmp_path / "a"))
    model = learner.trainer.model
    with torch.no_grad():  # a trained adapter (B is zero at the start)
        for name, p in model.named_parameters():
            if lora.LORA_KEY in name:
                p.add_(0.1 * torch.randn_like(p))
    assert learner.sync_payload(full=True).keys() == model.state_dict().keys()
    assert learner.sync_payload(full=False).keys() == lora.adapter_state(model).keys()

    learner.trainer.cfg = runtime_cfg(tmp_path, *LORA, "runtime.lora_sync=merged")
    merged = learner.sync_payload(full=False)
    plain = type(model)(model.config).eval()
    plain.load_state_dict(merged)  # strict: plain names only
    ids = torch.randint(0, learner.trainer.vocab.size, (3, 6))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5
        )
