"""Token ids of semantic IDs and the prompts every backbone reads.

Level l's code c is the token `offsets[l] + c`; levels never share ids, so one softmax slice per
level holds exactly that level's codes. A from-scratch model's vocabulary is

    [<pad>, <bos>, <eos>, <sep>] + level-0 codes + ... + level-(L-1) codes + user tokens

A pretrained LM keeps its own vocabulary and special tokens; the SID tokens are appended after
it (`base_size` = its vocabulary size).

Prompts (shared by all backbones):

- decoder-only: `<bos> [<user_h>] t(i_1) ... t(i_n)`, then the target's L tokens. No separator
  and no `<eos>`: every semantic ID has exactly L tokens, so decoding stops after L steps and the
  same stream trains every position of a window at once (see `prompts.py`).
- encoder–decoder (T5): encoder `[<user_h>] t(i_1) ... t(i_n) <eos>`; decoder `<pad>` (T5's
  start token), then the target's L tokens and `<eos>`, which teaches the decoder to stop.

`<user_h>` is an optional hashed user token (TIGER hashes users into 2,000 tokens).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<sep>")


@dataclass
class SidVocab:
    """Maps semantic-ID codes to token ids and back.

    Attributes:
        codebook_sizes: codes per level, [L].
        level_names: token letter per level.
        base_size: ids below this are the backbone's own (specials for a scratch model).
        num_user_tokens: hashed user buckets appended after the SID tokens (0 = none).
        pad_id, bos_id, eos_id: special token ids.
    """

    codebook_sizes: list[int]
    level_names: list[str]
    base_size: int = len(SPECIAL_TOKENS)
    num_user_tokens: int = 0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    offsets: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = (self.base_size + np.cumsum([0, *self.codebook_sizes[:-1]])).tolist()

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def user_offset(self) -> int:
        return self.base_size + sum(self.codebook_sizes)

    @property
    def size(self) -> int:
        """Total vocabulary size the backbone's embedding must have."""
        return self.user_offset + self.num_user_tokens

    def level_slice(self, level: int) -> slice:
        """Token ids of one level's codes."""
        start = self.offsets[level]
        return slice(start, start + self.codebook_sizes[level])

    def item_tokens(self, codes: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Codes [..., L] -> token ids [..., L]."""
        if isinstance(codes, torch.Tensor):
            return codes + torch.as_tensor(self.offsets, dtype=codes.dtype, device=codes.device)
        return np.asarray(codes) + np.asarray(self.offsets)

    def user_token(self, user_id: str) -> int | None:
        """The hashed token of a raw user id, or None when user tokens are off."""
        if not self.num_user_tokens:
            return None
        digest = hashlib.blake2b(user_id.encode(), digest_size=8).digest()
        return self.user_offset + int.from_bytes(digest, "little") % self.num_user_tokens

    def token_strings(self) -> list[str]:
        """The SID and user token strings in id order (specials excluded)."""
        sids = [
            f"<{name}_{c}>"
            for name, size in zip(self.level_names, self.codebook_sizes, strict=True)
            for c in range(size)
        ]
        return sids + [f"<user_{u}>" for u in range(self.num_user_tokens)]

    def to_dict(self) -> dict[str, object]:
        return {
            "codebook_sizes": self.codebook_sizes,
            "level_names": self.level_names,
            "base_size": self.base_size,
            "num_user_tokens": self.num_user_tokens,
            "pad_id": self.pad_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> SidVocab:
        return cls(**data)  # type: ignore[arg-type]
