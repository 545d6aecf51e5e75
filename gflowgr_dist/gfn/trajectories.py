"""From training examples to scored-ready trajectories: the rollout stage of a GFlowGR step.

`TrajectorySource` turns a batch of training examples (decoder windows or T5 examples) into a
`TrajectoryBatch`: per example the positive and N augmented items (gfn/sampler.py), their
behaviour levels, their normalised CF scores, and the strategy that proposed each. The batch is
plain numpy, stamped with the policy version that sampled it, so it can cross a process or a
Ray queue; the reward stage (`trajectory_rewards`) and the learner consume it unchanged, in
one process or many.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel

from gflowgr_dist.config import STRATEGIES, GfnConfig
from gflowgr_dist.data.schema import RecDataset
from gflowgr_dist.data.split import training_sequences
from gflowgr_dist.decoding import ItemRanker
from gflowgr_dist.decoding.sampling import sample_sids, sample_sids_in_windows
from gflowgr_dist.gfn.reward import RewardModel, lm_score, normalise_per_row
from gflowgr_dist.gfn.sampler import (
    CLICKED,
    LIKED,
    UNOBSERVED,
    Augmentation,
    ExampleBatch,
    TrajectorySampler,
)
from gflowgr_dist.gfn.scoring import window_targets
from gflowgr_dist.models.prompts import (
    Window,
    collate_decoder_windows,
    decoder_prompts,
    encoder_prompts,
)
from gflowgr_dist.models.vocab import SidVocab


@dataclass
class TrajectoryBatch:
    """What the rollout stage hands to the reward stage and the learner.

    Attributes:
        example_ids: indices of the training examples (windows) this batch covers, [B].
        users: user of each target, [E].
        targets: the positive item of each target, [E].
        items: positive (column 0) and augmented items, [E, T].
        levels: behaviour level of each item (sampler.LIKED / CLICKED / UNOBSERVED), [E, T].
        strategies: index into config.STRATEGIES of each augmented item, [E, T-1].
        cf_scores: CF score of each item normalised per example into [0, 1], [E, T] or None.
        policy_version: the learner version whose weights sampled the batch.
        progress: training progress p ∈ [0, 1] the sampler's schedule used.
        positions: (window in the chunk, item position in it) of each example, [E, 2], for
            decoder windows; None for T5 examples (one per chunk entry).
    """

    example_ids: np.ndarray
    users: np.ndarray
    targets: np.ndarray
    items: np.ndarray
    levels: np.ndarray
    strategies: np.ndarray
    cf_scores: np.ndarray | None
    policy_version: int = 0
    progress: float = 0.0
    positions: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_trajectories(self) -> int:
        return int(self.items.size)


class TrajectorySource:
    """Builds `TrajectoryBatch`es for one dataset (see module docstring)."""

    def __init__(
        self,
        gfn: GfnConfig,
        dataset: RecDataset,
        ranker: ItemRanker,
        cf_model: Any = None,
        *,
        seq2seq: bool = False,
    ) -> None:
        self.gfn = gfn
        self.ranker = ranker
        self.cf_model = cf_model
        self.seq2seq = seq2seq
        self.sampler = TrajectorySampler(gfn.sampler, dataset.num_items)
        self.logs = user_logs(dataset, gfn.sampler.liked_rating)

    def positions(self, chunk: list[Any], rng: np.random.Generator) -> np.ndarray | None:
        """(window, item position) of every example that gets trajectories, [E, 2].

        Every target of a decoder window is an example; with `gfn.targets_per_window = k` a
        random k of each window's targets are (the SFT loss still covers all of them), which
        cuts the sampling and scoring work of a step about in proportion. No random draw is
        made when every target is kept, so such runs match runs without the option. None for
        T5 examples, one per chunk entry.
        """
        if self.seq2seq:
            return None
        rows, cols = window_targets(chunk)
        keep = self.gfn.targets_per_window
        if keep is None or all(w.num_targets <= keep for w in chunk):
            return np.stack([rows, cols], axis=1)
        chosen = []
        for index, window in enumerate(chunk):
            # Each window's kept targets, in order.
            picks = np.arange(len(window.items) - window.num_targets, len(window.items))
            if len(picks) > keep:
                picks = np.sort(rng.choice(picks, keep, replace=False))
            chosen.append(np.stack([np.full(len(picks), index), picks], axis=1))
        return np.concatenate(chosen)

    def unpack(
        self, chunk: list[Any], positions: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """(users [E], histories, targets [E]) of a batch of training examples.

        Decoder windows: the examples at `positions` (`TrajectorySource.positions`), every
        target of every window when None.
        """
        if self.seq2seq:
            users, histories, targets = zip(*chunk, strict=True)
            return np.array(users), list(histories), np.array(targets)
        rows, cols = window_targets(chunk) if positions is None else positions.T
        users = np.array([chunk[r].user for r in rows])
        histories = [chunk[r].items[:c] for r, c in zip(rows, cols, strict=True)]
        targets = np.array([chunk[r].items[c] for r, c in zip(rows, cols, strict=True)])
        return users, histories, targets

    def example_batch(
        self, users: np.ndarray, histories: list[np.ndarray], targets: np.ndarray
    ) -> ExampleBatch:
        empty = (np.empty(0, np.int64), np.empty(0, np.int64))
        logs = [self.logs.get(int(u), empty) for u in users]
        levels = [level_of(log, int(t)) for log, t in zip(logs, targets, strict=True)]
        return ExampleBatch(
            users=users,
            targets=targets,
            target_levels=np.array(levels, dtype=np.int64),
            excluded=[items for items, _ in logs],
            logged_items=[items for items, _ in logs],
            logged_levels=[lv for _, lv in logs],
            cf_scores=self.cf_scores(histories) if self.cf_model is not None else None,
        )

    def cf_scores(self, histories: list[np.ndarray]) -> np.ndarray:
        from gflowgr_dist.train.cf import cf_scores

        safe = [h if len(h) else np.zeros(1, np.int64) for h in histories]
        return cf_scores(self.cf_model, safe)

    def build(
        self,
        chunk: list[Any],
        example_ids: np.ndarray,
        progress: float,
        rng: np.random.Generator,
        generator: torch.Generator | None = None,
        policy_version: int = 0,
        num_augmented: int | None = None,
    ) -> TrajectoryBatch:
        """Samples the augmented items of every example of `chunk` and stamps the batch."""
        positions = self.positions(chunk, rng)
        users, histories, targets = self.unpack(chunk, positions)
        batch = self.example_batch(users, histories, targets)
        windows = None if self.seq2seq else WindowPrefixes(chunk, positions)
        augmentation = self.augment(
            batch, histories, progress, rng, generator, num_augmented, windows
        )
        items = np.concatenate([targets[:, None], augmentation.items], axis=1)  # [E, T]
        levels = np.concatenate([batch.target_levels[:, None], augmentation.levels], axis=1)
        cf = None
        if batch.cf_scores is not None:
            norm = normalise_per_row(torch.from_numpy(batch.cf_scores), self.gfn.reward.score_norm)
            cf = norm.gather(1, torch.from_numpy(items)).numpy()  # [E, T]
        return TrajectoryBatch(
            example_ids=np.asarray(example_ids),
            users=users,
            targets=targets,
            items=items,
            levels=levels,
            strategies=augmentation.strategies,
            cf_scores=cf,
            policy_version=policy_version,
            progress=progress,
            positions=positions,
        )

    def augment(
        self,
        batch: ExampleBatch,
        histories: list[np.ndarray],
        progress: float,
        rng: np.random.Generator,
        generator: torch.Generator | None,
        num_augmented: int | None = None,
        windows: WindowPrefixes | None = None,
    ) -> Augmentation:
        count = len(batch.targets)
        if num_augmented is not None:  # an explicit count (calibration) always uses the sampler
            update = {"num_augmented": num_augmented}
            sampler = TrajectorySampler(
                self.gfn.sampler.model_copy(update=update), self.sampler.num_items
            )
            return sampler.sample(batch, progress, rng, None)
        if self.gfn.algorithm == "sft":
            empty = np.empty((count, 0), np.int64)
            return Augmentation(empty, empty, empty)
        if self.gfn.algorithm == "grpo":
            rows = np.arange(count)
            items = self.policy_samples(histories, rows, self.gfn.grpo_group, generator, windows)
            on_policy = np.full(items.shape, STRATEGIES.index("on_policy"))
            return Augmentation(items, np.full(items.shape, UNOBSERVED), on_policy)

        def on_policy_fn(rows: np.ndarray, n: int) -> np.ndarray:
            return self.policy_samples(histories, rows, n, generator, windows)

        return self.sampler.sample(batch, progress, rng, on_policy_fn)

    def policy_samples(
        self,
        histories: list[np.ndarray],
        rows: np.ndarray,
        count: int,
        generator: torch.Generator | None,
        windows: WindowPrefixes | None = None,
    ) -> np.ndarray:
        """`count` items per example sampled from the current policy under the trie, [R, n].

        With `windows` (decoder backbones), each example's prompt is read as a prefix of its
        training window: one prefill per window instead of one per example.
        """
        ranker = self.ranker
        model: PreTrainedModel = ranker.model
        was_training = model.training
        model.eval()
        options = {
            "num_samples": count,
            "temperature": self.gfn.sampler.temperature,
            "generator": generator,
        }
        if windows is not None:
            prompts, window_rows, starts = windows.prompts(rows, ranker.sid_tokens, ranker.vocab)
            codes = sample_sids_in_windows(
                ranker.stepper, prompts, window_rows, starts, ranker.trie, ranker.vocab, **options
            )
        else:
            build = encoder_prompts if self.seq2seq else decoder_prompts
            prompts = build([histories[r] for r in rows], ranker.sid_tokens, ranker.vocab)
            codes = sample_sids(ranker.stepper, prompts, ranker.trie, ranker.vocab, **options)
        model.train(was_training)
        sid = ranker.trie.sid_index(codes.view(-1, codes.shape[-1])).numpy()
        return ranker.items_by_sid[sid, 0].reshape(len(rows), count)


@dataclass
class WindowPrefixes:
    """The examples of a batch of decoder windows as prefixes of those windows.

    Attributes:
        chunk: the training windows.
        positions: (window, item position) of each example, [E, 2].
    """

    chunk: list[Window]
    positions: np.ndarray

    def prompts(
        self, rows: np.ndarray, sid_tokens: np.ndarray, vocab: SidVocab
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """The windows examples `rows` [R] lie in, and each row's (window, start) in them."""
        used, window_rows = np.unique(self.positions[rows, 0], return_inverse=True)
        prompts = collate_decoder_windows([self.chunk[w] for w in used], sid_tokens, vocab)
        # The target's first token follows <bos> and the items before it.
        starts = 1 + self.positions[rows, 1] * vocab.num_levels
        return prompts, torch.from_numpy(window_rows), torch.from_numpy(starts)


def trajectory_rewards(
    reward: RewardModel, batch: TrajectoryBatch, log_pf_sum: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(log R, R) of every trajectory of `batch`, [E, T]; the reward stage.

    `log_pf_sum` [E, T] is needed only for the LM's own score (reward.score == "lm").
    """
    score = None
    if reward.cfg.score == "cf" and batch.cf_scores is not None:
        score = torch.from_numpy(batch.cf_scores)
    elif reward.cfg.score == "lm" and log_pf_sum is not None:
        score = lm_score(log_pf_sum).to(reward.codes.device)  # the policy may sit on a GPU
    parts = reward.parts(torch.from_numpy(batch.items), torch.from_numpy(batch.levels), score)
    return reward.log_rewards(parts), reward(parts)


def user_logs(dataset: RecDataset, liked_rating: float) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each user's training items (sorted) and behaviour levels (rating >= liked: LIKED)."""
    users, sequences = training_sequences(dataset)
    offsets = dataset.user_offsets()
    logs = {}
    for user, seq in zip(users, sequences, strict=True):
        rating = dataset.ratings[offsets[user] : offsets[user] + len(seq)]
        level = np.where(np.isnan(rating) | (rating >= liked_rating), LIKED, CLICKED)
        order = np.argsort(seq, kind="stable")
        logs[user] = (seq[order], level[order])
    return logs


def level_of(log: tuple[np.ndarray, np.ndarray], item: int) -> int:
    """Behaviour level of `item` in a user's sorted log; LIKED when absent (a held-out positive)."""
    items, levels = log
    at = np.searchsorted(items, item)
    return int(levels[at]) if at < len(items) and items[at] == item else LIKED
