"""One decoding step at a time over a KV cache, for both backbone kinds.

Beam search and exact scoring only need two operations from a model:

- `start(prompts)`: read the prompts once; return level-0 log-probabilities [B, V] and a state
  holding the KV cache (and, for T5, the encoder output);
- `advance(state, rows, tokens)`: keep cache rows `rows` (to follow beams, or to fan a prompt
  out to many prefixes), append one token to each, return the next log-probabilities [R, V].

Log-probabilities are over the full vocabulary (no renormalisation inside the trie), as
transformers' beam search computes them, so both rank items by the same score:
sum_l log P(t_l | prompt, t_<l).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from gflowgr_dist.models.backbones import is_encoder_decoder


@dataclass
class DecodeState:
    """Cache and bookkeeping for R rows in flight."""

    cache: object
    attention_mask: torch.Tensor  # [R, T] (decoder: prompt + generated; T5: encoder mask)
    next_position: torch.Tensor | None = None  # [R] decoder only
    encoder_hidden: torch.Tensor | None = None  # [R, S, H] T5 only


class Stepper:
    """Step interface over a transformers model (eval mode, no grad)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.encoder_decoder = is_encoder_decoder(model)
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def start(self, prompts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, DecodeState]:
        prompts = {k: v.to(self.device) for k, v in prompts.items()}
        if self.encoder_decoder:
            return self._start_seq2seq(prompts)
        out = self.model(
            input_ids=prompts["input_ids"],
            attention_mask=prompts["attention_mask"],
            position_ids=prompts["position_ids"],
            use_cache=True,
        )
        state = DecodeState(
            cache=out.past_key_values,
            attention_mask=prompts["attention_mask"],
            next_position=prompts["position_ids"][:, -1] + 1,
        )
        return out.logits[:, -1].float().log_softmax(-1), state

    def _start_seq2seq(self, prompts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, DecodeState]:
        encoder = self.model.get_encoder()
        hidden = encoder(
            input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"]
        ).last_hidden_state
        start = torch.full(
            (hidden.shape[0], 1), self.model.config.decoder_start_token_id, device=self.device
        )
        out = self.model(
            encoder_outputs=(hidden,),
            attention_mask=prompts["attention_mask"],
            decoder_input_ids=start,
            use_cache=True,
        )
        state = DecodeState(
            cache=out.past_key_values,
            attention_mask=prompts["attention_mask"],
            encoder_hidden=hidden,
        )
        return out.logits[:, -1].float().log_softmax(-1), state

    @torch.no_grad()
    def advance(
        self, state: DecodeState, rows: torch.Tensor | None, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, DecodeState]:
        """Keeps cache rows `rows` [R] and feeds `tokens` [R]; returns log-probs [R, V].

        `rows=None` keeps every row in place: no copy of the cache (it is the step's largest
        memory traffic when rows only continue).
        """
        tokens = tokens.to(self.device)
        if rows is not None:
            rows = rows.to(self.device)
            state.cache.reorder_cache(rows)
        keep = (lambda x: x) if rows is None else (lambda x: x[rows])
        mask = keep(state.attention_mask)
        if self.encoder_decoder:
            hidden = keep(state.encoder_hidden)
            out = self.model(
                encoder_outputs=(hidden,),
                attention_mask=mask,
                decoder_input_ids=tokens[:, None],
                past_key_values=state.cache,
                use_cache=True,
            )
            new = DecodeState(out.past_key_values, mask, encoder_hidden=hidden)
            return out.logits[:, -1].float().log_softmax(-1), new
        mask = torch.cat([mask, mask.new_ones(len(tokens), 1)], dim=1)
        position = keep(state.next_position)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=position[:, None],
            past_key_values=state.cache,
            use_cache=True,
        )
        new = DecodeState(out.past_key_values, mask, next_position=position + 1)
        return out.logits[:, -1].float().log_softmax(-1), new
