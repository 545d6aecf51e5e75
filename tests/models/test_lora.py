"""LoRA for the fine-tuning stage: the merged and adapter views compute what the injected model
computes, and the PEFT folder is what peft itself loads (the oracle)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gflowgr_dist.models import lora

SPEC = lora.LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj", "o_proj"))


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def trained_adapter(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """Injects SPEC and moves every adapter tensor off its initial value (B would be 0)."""
    lora.inject_lora(model, SPEC)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if lora.LORA_KEY in name:
                param.add_(0.05 * torch.randn_like(param))
    return model


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(1))


def test_injection_freezes_the_base_and_starts_as_the_same_function():
    model = tiny_llama()
    before = logits(model, IDS)
    lora.inject_lora(model, SPEC)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(lora.LORA_KEY in n for n in trainable)
    assert len(trainable) == 2 * 3 * 2  # A and B, 3 targets, 2 layers
    torch.testing.assert_close(logits(model, IDS), before, rtol=0, atol=0)


def test_merged_state_is_the_injected_function_in_a_plain_model():
    model = trained_adapter(tiny_llama())
    plain = tiny_llama(seed=5)
    plain.load_state_dict(lora.plain_state(model, merged=True))
    torch.testing.assert_close(logits(plain, IDS), logits(model, IDS), rtol=1e-5, atol=1e-5)
    unmerged = tiny_llama(seed=5)
    unmerged.load_state_dict(lora.plain_state(model, merged=False))
    assert not torch.allclose(logits(unmerged, IDS), logits(model, IDS), atol=1e-4)


def test_loading_plain_weights_into_an_injected_model_computes_them():
    source = trained_adapter(tiny_llama())
    target = trained_adapter(tiny_llama(seed=3))
    lora.load_plain_state(target, lora.plain_state(source, merged=True))
    torch.testing.assert_close(logits(target, IDS), logits(source, IDS), rtol=1e-5, atol=1e-5)


def test_the_adapter_alone_moves_a_model_with_the_same_base(tmp_path):
    learner = trained_adapter(tiny_llama())
    engine = lora.inject_lora(tiny_llama(), SPEC)
    payload = lora.adapter_state(learner)
    assert lora.is_adapter_only(payload)
    assert sum(v.numel() for v in payload.values()) < 0.2 * sum(
        v.numel() for v in learner.state_dict().values()
    )
    lora.load_adapter(engine, payload)
    torch.testing.assert_close(logits(engine, IDS), logits(learner, IDS), rtol=0, atol=0)
    with pytest.raises(ValueError, match="same gfn.lora_"):
        lora.load_adapter(engine, {k: v for k, v in list(payload.items())[1:]})


def test_the_peft_folder_loads_in_peft_and_reads_back(tmp_path):
    from peft import PeftModel

    model = trained_adapter(tiny_llama())
    folder = lora.save_peft_adapter(model, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(tiny_llama(), str(folder)).eval()
    torch.testing.assert_close(logits(peft_model, IDS), logits(model, IDS), rtol=1e-6, atol=1e-6)
    again = lora.inject_lora(tiny_llama(), SPEC)
    lora.load_adapter(again, lora.read_peft_adapter(folder))
    torch.testing.assert_close(logits(again, IDS), logits(model, IDS), rtol=0, atol=0)
