"""The standard way to decode semantic IDs: transformers `generate` with a prefix constraint.

LC-Rec, LETTER and MiniOneRec decode with `model.generate(num_beams=...,
prefix_allowed_tokens_fn=...)` where the function looks the generated prefix up in a dict of
allowed next tokens, one beam at a time. This module reproduces that path faithfully so that
`gflowgr bench decode` can time it against our vectorised beam search on the same model, and so
tests can check that both return the same items. Every generation setting is passed explicitly
(a model's own generation_config silently changed results in MiniOneRec #49).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import GenerationConfig

from gflowgr_dist.decoding import ItemRanker, Ranking


def prefix_table(ranker: ItemRanker) -> dict[tuple[int, ...], list[int]]:
    """Token prefix -> allowed next tokens (a Python dict, as the reference code builds it)."""
    table: dict[tuple[int, ...], set[int]] = {}
    for row in ranker.sid_tokens.tolist():
        for level in range(len(row)):
            table.setdefault(tuple(row[:level]), set()).add(row[level])
    return {prefix: sorted(allowed) for prefix, allowed in table.items()}


def hf_generate_rank(
    ranker: ItemRanker,
    histories: list[np.ndarray],
    k: int,
    *,
    beam_width: int,
    allowed: dict[tuple[int, ...], list[int]] | None = None,
) -> Ranking:
    """Top-k items by `generate(num_beams=beam_width, prefix_allowed_tokens_fn=...)`."""
    model, vocab = ranker.model, ranker.vocab
    allowed = allowed if allowed is not None else prefix_table(ranker)
    prompts = ranker.prompts(histories)
    encoder_decoder = ranker.stepper.encoder_decoder
    prompt_len = 1 if encoder_decoder else prompts["input_ids"].shape[1]

    def allowed_tokens(_batch_id: int, input_ids: torch.Tensor) -> list[int]:
        generated = tuple(input_ids[prompt_len:].tolist())
        return allowed.get(generated, [vocab.eos_id])

    config = GenerationConfig(
        num_beams=beam_width,
        num_return_sequences=beam_width,
        max_new_tokens=vocab.num_levels,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=vocab.pad_id,
        eos_token_id=vocab.eos_id,
        decoder_start_token_id=vocab.pad_id if encoder_decoder else None,
    )
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=prompts["input_ids"],
            attention_mask=prompts["attention_mask"],
            generation_config=config,
            prefix_allowed_tokens_fn=allowed_tokens,
        )
    batch = len(histories)
    tokens = out.sequences[:, prompt_len : prompt_len + vocab.num_levels]
    codes = (tokens - torch.tensor(vocab.offsets)).view(batch, beam_width, -1)
    scores = out.sequences_scores.view(batch, beam_width).float()
    return ranker._expand_beams(codes, scores, k, None)
