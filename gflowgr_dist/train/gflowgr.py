"""GFlowGR fine-tuning in one process: L = L_SFT + λ Σ_n L_GFN(τ_n) (paper.md §2), and the DPO,
S-DPO, GRPO and continued-SFT baselines on the same data, checkpoint and budget.

Per step, for the batch's training examples (the targets of decoder windows, or T5 examples):

1. the sampler proposes N augmented items per example (gfn/sampler.py);
2. one packed forward pass gives the SFT loss and log P_F of every trajectory (gfn/scoring.py);
3. the reward model gives log R of every trajectory (gfn/reward.py);
4. the algorithm's loss: TB with log Z(U) from a head or VarGrad, DB / SubTB with a flow head
   (gfn/losses.py), or a preference loss (gfn/preference.py).

Everything else (schedule, time budget, validation on NDCG@10 with early stopping, checkpoints,
resume, logging) is the SFT trainer's. Each validation also measures flow calibration: the
Pearson correlation between log P_θ(item | user) and log R(item | user) over the positive and
sampled items of held-out validation users; a GFlowNet that learns its target raises it.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from gflowgr_dist.config import STRATEGIES, Config
from gflowgr_dist.data.schema import RecDataset
from gflowgr_dist.data.split import Splits, split_histories, training_sequences
from gflowgr_dist.decoding.sampling import sample_sids
from gflowgr_dist.gfn import losses, preference
from gflowgr_dist.gfn.heads import FlowHead, LogZHead
from gflowgr_dist.gfn.reward import RewardModel, lm_score, normalise_per_row
from gflowgr_dist.gfn.sampler import (
    CLICKED,
    LIKED,
    Augmentation,
    ExampleBatch,
    TrajectorySampler,
)
from gflowgr_dist.gfn.scoring import (
    ScoredTrajectories,
    score_decoder_windows,
    score_seq2seq,
    window_targets,
)
from gflowgr_dist.models.prompts import Window, decoder_prompts, encoder_prompts
from gflowgr_dist.semantic_ids.table import SemanticIdTable
from gflowgr_dist.train.sft import SftTrainer

logger = logging.getLogger(__name__)

FIXES = {
    "log_rewards": "raise gfn.reward.eps or lower gfn.reward.beta",
    "log_pf": "lower train.lr or train.grad_clip",
    "loss": "lower train.lr or gfn.lam, or use gfn.log_z=vargrad",
}


class GflowgrTrainer(SftTrainer):
    """The SFT trainer with the GFlowGR (or a baseline's) loss; see the module docstring."""

    role = "gfn"

    def __init__(
        self,
        cfg: Config,
        dataset: RecDataset,
        splits: Splits,
        table: SemanticIdTable,
        out_dir: Path,
        *,
        model=None,
        vocab=None,
        cf_model=None,
    ) -> None:
        super().__init__(cfg, dataset, splits, table, out_dir, model=model, vocab=vocab)
        gfn = cfg.gfn
        self.gfn = gfn
        self.trie = self.ranker.trie
        self.cf_model = cf_model
        self.sampler = TrajectorySampler(gfn.sampler, dataset.num_items)
        self.reward = RewardModel(gfn.reward, table.codes)
        self._user_logs()
        hidden = (
            self.model.config.hidden_size
            if hasattr(self.model.config, "hidden_size")
            else (self.model.config.d_model)
        )
        self.log_z_head = LogZHead(hidden) if self._uses_log_z_head() else None
        self.flow_head = FlowHead(hidden) if gfn.algorithm in ("db", "subtb") else None
        self.log_z_ready = False
        self.reference = None
        if gfn.algorithm in ("dpo", "sdpo", "grpo"):
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._build_optimizer()

    # --- set-up ---------------------------------------------------------------------------

    def _uses_log_z_head(self) -> bool:
        return self.gfn.algorithm == "tb" and self.gfn.log_z == "head"

    def _heads(self) -> dict[str, torch.nn.Module]:
        heads = {}
        if getattr(self, "log_z_head", None) is not None:
            heads["log_z"] = self.log_z_head
        if getattr(self, "flow_head", None) is not None:
            heads["flow"] = self.flow_head
        if getattr(self, "reward", None) is not None and any(
            True for _ in self.reward.parameters()
        ):
            heads["reward"] = self.reward
        return heads

    def _build_optimizer(self) -> None:
        """AdamW over the backbone, plus log Z / flow heads at their own learning rate."""
        train = self.cfg.train
        groups: list[dict[str, Any]] = [
            {"params": [p for p in self.model.parameters() if p.requires_grad]}
        ]
        if self.log_z_head is not None:
            groups += self.log_z_head.parameter_groups(train.lr, self.gfn.log_z_lr_multiplier)
        extra = [
            *(self.flow_head.parameters() if self.flow_head else []),
            *self.reward.parameters(),
        ]
        if extra:
            groups.append({"params": extra, "lr": train.lr * self.gfn.log_z_lr_multiplier})
        self.optimizer = torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)

    def _user_logs(self) -> None:
        """Each user's training items and behaviour levels (ratings >= liked_rating: liked)."""
        users, sequences = training_sequences(self.dataset)
        offsets = self.dataset.user_offsets()
        ratings = self.dataset.ratings
        liked = self.gfn.sampler.liked_rating
        self.logs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for user, seq in zip(users, sequences, strict=True):
            rating = ratings[offsets[user] : offsets[user] + len(seq)]
            level = np.where(np.isnan(rating) | (rating >= liked), LIKED, CLICKED)
            order = np.argsort(seq, kind="stable")
            self.logs[user] = (seq[order], level[order])

    def _level_of(self, user: int, item: int) -> int:
        items, levels = self.logs.get(user, (np.empty(0, np.int64), np.empty(0, np.int64)))
        at = np.searchsorted(items, item)
        return int(levels[at]) if at < len(items) and items[at] == item else LIKED

    # --- one step -------------------------------------------------------------------------

    def _train_epoch(self) -> bool:
        # Sampling streams are re-derived per epoch, so a resume at an epoch boundary replays
        # exactly what an uninterrupted run would have drawn.
        self.rng = np.random.default_rng([self.cfg.run.seed, 7, self.state.epoch])
        self.generator = torch.Generator().manual_seed(self.cfg.run.seed * 1000 + self.state.epoch)
        return super()._train_epoch()

    def _loss(self, chunk: list[Any]) -> tuple[Tensor | None, dict[str, float]]:
        users, histories, targets = self._unpack(chunk)
        batch = self._example_batch(users, histories, targets)
        progress = self.state.step / max(1, self.schedule.total_steps)
        augmentation = self._augment(batch, histories, progress)
        scored = self._score(chunk, histories, targets, augmentation.items)
        items = np.concatenate([targets[:, None], augmentation.items], axis=1)  # [E, T]
        levels = np.concatenate([batch.target_levels[:, None], augmentation.levels], axis=1)
        log_rewards, rewards = self._rewards(items, levels, batch, scored)
        if not self._finite({"log_rewards": log_rewards, "log_pf": scored.log_pf}):
            return None, {}
        loss, extra = self._objective(chunk, histories, scored, items, log_rewards, rewards)
        if not self._finite({"loss": loss}):
            return None, {}
        extra |= self._step_metrics(scored, log_rewards, augmentation, progress)
        return loss, extra | {
            "tokens": float(len(targets) * items.shape[1] * self.vocab.num_levels)
        }

    def _unpack(self, chunk: list[Any]) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """(users [E], histories, targets [E]) of the batch's training examples."""
        if self.seq2seq:
            users, histories, targets = zip(*chunk, strict=True)
            return np.array(users), list(histories), np.array(targets)
        rows, cols = window_targets(chunk)
        users = np.array([chunk[r].user for r in rows])
        histories = [chunk[r].items[:c] for r, c in zip(rows, cols, strict=True)]
        targets = np.array([chunk[r].items[c] for r, c in zip(rows, cols, strict=True)])
        return users, histories, targets

    def _example_batch(
        self, users: np.ndarray, histories: list[np.ndarray], targets: np.ndarray
    ) -> ExampleBatch:
        empty = (np.empty(0, np.int64), np.empty(0, np.int64))
        logs = [self.logs.get(int(u), empty) for u in users]
        needs_cf = self.cf_model is not None
        scores = self._cf_scores(histories) if needs_cf else None
        return ExampleBatch(
            users=users,
            targets=targets,
            target_levels=np.array(
                [self._level_of(int(u), int(t)) for u, t in zip(users, targets, strict=True)]
            ),
            excluded=[items for items, _ in logs],
            logged_items=[items for items, _ in logs],
            logged_levels=[levels for _, levels in logs],
            cf_scores=scores,
        )

    def _cf_scores(self, histories: list[np.ndarray]) -> np.ndarray:
        from gflowgr_dist.train.cf import cf_scores

        safe = [h if len(h) else np.zeros(1, np.int64) for h in histories]
        return cf_scores(self.cf_model, safe)

    def _augment(
        self, batch: ExampleBatch, histories: list[np.ndarray], progress: float
    ) -> Augmentation:
        if self.gfn.algorithm == "sft":
            empty = np.empty((len(batch.targets), 0), np.int64)
            return Augmentation(empty, empty, empty)
        if self.gfn.algorithm == "grpo":
            items = self._policy_samples(histories, np.arange(len(histories)), self.gfn.grpo_group)
            unobserved = np.full(items.shape, 2)
            return Augmentation(
                items, unobserved, np.full(items.shape, STRATEGIES.index("on_policy"))
            )

        def on_policy(rows: np.ndarray, count: int) -> np.ndarray:
            return self._policy_samples(histories, rows, count)

        return self.sampler.sample(batch, progress, self.rng, on_policy)

    def _policy_samples(
        self, histories: list[np.ndarray], rows: np.ndarray, count: int
    ) -> np.ndarray:
        """`count` items per example sampled from the current policy under the trie, [R, n]."""
        chosen = [histories[r] for r in rows]
        build = encoder_prompts if self.seq2seq else decoder_prompts
        prompts = build(chosen, self.sid_tokens, self.vocab)
        was_training = self.model.training
        self.model.eval()
        codes = sample_sids(
            self.ranker.stepper,
            prompts,
            self.trie,
            self.vocab,
            num_samples=count,
            temperature=self.gfn.sampler.temperature,
            generator=self.generator,
        )
        self.model.train(was_training)
        sid = self.trie.sid_index(codes.view(-1, codes.shape[-1])).numpy()
        return self.ranker.items_by_sid[sid, 0].reshape(len(rows), count)

    def _score(
        self,
        chunk: list[Any],
        histories: list[np.ndarray],
        targets: np.ndarray,
        augmented: np.ndarray,
        model=None,
    ) -> ScoredTrajectories:
        model = model or self.model
        codes = self.table.codes
        if self.seq2seq:
            items = np.concatenate([targets[:, None], augmented], axis=1)
            return score_seq2seq(
                model, histories, items, self.sid_tokens, self.vocab, self.trie, codes
            )
        return score_decoder_windows(
            model, chunk, augmented, self.sid_tokens, self.vocab, self.trie, codes
        )

    def _rewards(
        self, items: np.ndarray, levels: np.ndarray, batch: ExampleBatch, scored: ScoredTrajectories
    ) -> tuple[Tensor, Tensor]:
        """log R and R of every trajectory, [E, T]."""
        score = None
        if self.gfn.reward.score == "cf" and batch.cf_scores is not None:
            norm = normalise_per_row(torch.from_numpy(batch.cf_scores))
            score = norm.gather(1, torch.from_numpy(items))
        elif self.gfn.reward.score == "lm":
            score = lm_score(scored.log_pf.sum(-1))
        parts = self.reward.parts(torch.from_numpy(items), torch.from_numpy(levels), score)
        return self.reward.log_rewards(parts), self.reward(parts)

    def _objective(
        self,
        chunk: list[Any],
        histories: list[np.ndarray],
        scored: ScoredTrajectories,
        items: np.ndarray,
        log_rewards: Tensor,
        rewards: Tensor,
    ) -> tuple[Tensor, dict[str, float]]:
        algorithm, lam = self.gfn.algorithm, self.gfn.lam
        count, width, levels = scored.log_pf.shape
        log_pf_sum = scored.log_pf.sum(-1)  # [E, T]
        if algorithm == "sft":
            return scored.loss_sft, {"loss_sft": scored.loss_sft.item()}
        if algorithm in ("dpo", "sdpo", "grpo"):
            with torch.no_grad():
                ref = self._score(chunk, histories, items[:, 0], items[:, 1:], model=self.reference)
            ref_sum = ref.log_pf.sum(-1)
            if algorithm == "dpo":
                per = preference.dpo_loss(log_pf_sum, ref_sum, self.gfn.dpo_beta)
            elif algorithm == "sdpo":
                per = preference.sdpo_loss(log_pf_sum, ref_sum, self.gfn.dpo_beta)
            else:
                per = preference.grpo_loss(
                    log_pf_sum[:, 1:], ref_sum[:, 1:], rewards[:, 1:], self.gfn.grpo_kl
                )
            loss = scored.loss_sft + lam * per.mean()
            return loss, {"loss_sft": scored.loss_sft.item(), "loss_pref": per.mean().item()}

        # GFlowNet balance losses over all T trajectories of each example.
        flat_pf = scored.log_pf.reshape(count * width, levels)
        flat_r = log_rewards.reshape(-1)
        extra: dict[str, float] = {}
        if algorithm == "tb":
            log_z = self._log_z(scored, log_pf_sum, log_rewards)  # [E]
            per = losses.trajectory_balance(log_z.repeat_interleave(width), flat_pf, flat_r)
            residual = losses.tb_residual(log_z.repeat_interleave(width), flat_pf, flat_r)
            extra = {"log_z": log_z.mean().item(), "tb_residual": residual.abs().mean().item()}
        else:
            flows = self.flow_head(scored.hidden).reshape(count * width, levels)
            if algorithm == "db":
                per = losses.detailed_balance(flows, flat_pf, flat_r)
            else:
                per = losses.subtrajectory_balance(flows, flat_pf, flat_r, self.gfn.subtb_lambda)
            extra = {"log_z": flows.view(count, width, levels)[:, 0, 0].mean().item()}
        per = per.view(count, width)
        loss = losses.gfn_objective(scored.loss_sft, per, lam)
        extra |= {"loss_sft": scored.loss_sft.item(), "loss_gfn": per.sum(1).mean().item()}
        return loss, extra

    def _log_z(self, scored: ScoredTrajectories, log_pf_sum: Tensor, log_rewards: Tensor) -> Tensor:
        """log Z(U) per example: VarGrad estimate, or the head (warm-started from VarGrad)."""
        estimate = losses.vargrad_log_z(log_pf_sum, log_rewards)  # [E]
        if self.log_z_head is None:
            return estimate
        if not self.log_z_ready and self.state.step == 0:
            # Start the head at the batch's VarGrad estimate so TB begins near balance.
            with torch.no_grad():
                self.log_z_head.mlp[-1].bias.fill_(float(estimate.mean()))
            self.log_z_ready = True
        return self.log_z_head(scored.context.float())

    def _finite(self, tensors: dict[str, Tensor]) -> bool:
        """Checks each tensor; stops the run or skips the step per `gfn.on_error`."""
        for name, tensor in tensors.items():
            try:
                losses.check_finite(name, tensor.detach(), FIXES[name])
            except FloatingPointError as err:
                if self.gfn.on_error == "stop":
                    raise FloatingPointError(f"step {self.state.step + 1}: {err}") from None
                logger.warning("gfn: skipping step %d: %s", self.state.step + 1, err)
                self.metrics.log(self.state.step, {"gfn/skipped_steps": 1})
                return False
        return True

    def _step_metrics(
        self,
        scored: ScoredTrajectories,
        log_rewards: Tensor,
        augmentation: Augmentation,
        progress: float,
    ) -> dict[str, float]:
        out = {"log_reward_pos": log_rewards[:, 0].mean().item()}
        if log_rewards.shape[1] > 1:
            out["log_reward_aug"] = log_rewards[:, 1:].mean().item()
        used = augmentation.strategies.reshape(-1)
        for index, name in enumerate(STRATEGIES):
            out[f"mix_{name}"] = float((used == index).mean()) if used.size else 0.0
        schedule = self.sampler.schedule(progress)
        out["cf_band_low"], out["cf_band_high"] = schedule.cf_band
        return out

    def _train_batches_per_epoch(self) -> list[np.ndarray]:
        from gflowgr_dist.train.sft import length_bucketed_batches

        rng = np.random.default_rng([self.cfg.run.seed, 0])
        train = self.cfg.train
        return length_bucketed_batches(
            self.lengths, train.batch_size, rng, fraction=train.epoch_fraction
        )

    # --- validation -----------------------------------------------------------------------

    def _validation_extras(self) -> dict[str, float]:
        if not self.gfn.calibration_users:
            return {}
        return {"gfn/calibration": self.calibration()["pearson"]}

    @torch.no_grad()
    def calibration(self, path: Path | None = None) -> dict[str, float]:
        """Pearson r of log P_θ(item | user) vs log R(item | user) on validation users.

        Both are centred per user first: TB's fixed point is log P = log R − log Z(U), so
        only the within-user variation is the flow's to match (log Z differs by user).

        Items: each user's positive plus N items from the sampler at the end of its schedule
        (progress 1), so the pairs cover liked, CF-likely and random items.
        """
        users, histories, targets, _ = split_histories(self.dataset, self.splits, "valid")
        keep = np.random.default_rng(self.cfg.run.seed).permutation(len(users))
        keep = np.sort(keep[: self.gfn.calibration_users])
        users, targets = users[keep], targets[keep]
        histories = [histories[i] for i in keep]
        batch = self._example_batch(users, histories, targets)
        rng = np.random.default_rng([self.cfg.run.seed, 11])
        sampler = TrajectorySampler(
            self.gfn.sampler.model_copy(update={"num_augmented": 7}), self.dataset.num_items
        )
        augmentation = sampler.sample(batch, 1.0, rng)
        was_training = self.model.training
        self.model.eval()
        windows = [
            Window(int(u), np.append(h, t), 1)
            for u, h, t in zip(users, histories, targets, strict=True)
        ]
        scored = self._score(windows, histories, targets, augmentation.items)
        self.model.train(was_training)
        items = np.concatenate([targets[:, None], augmentation.items], axis=1)
        levels = np.concatenate([batch.target_levels[:, None], augmentation.levels], axis=1)
        log_rewards, _ = self._rewards(items, levels, batch, scored)
        log_p = scored.log_pf.sum(-1).double().numpy()  # [E, T]
        log_r = log_rewards.double().numpy()  # [E, T]
        pearson = within_user_pearson(log_p, log_r)
        log_p, log_r = log_p.reshape(-1), log_r.reshape(-1)
        if path is not None:
            columns = {
                "user": np.repeat(users, items.shape[1]),
                "item": items.reshape(-1),
                "log_p": log_p,
                "log_r": log_r,
            }
            pq.write_table(pa.table(columns), path)
        return {"pearson": pearson}


def within_user_pearson(log_p: np.ndarray, log_r: np.ndarray) -> float:
    """Pearson r over all (user, item) pairs after centring each user's row, [E, T] inputs."""
    p = (log_p - log_p.mean(axis=1, keepdims=True)).reshape(-1)
    r = (log_r - log_r.mean(axis=1, keepdims=True)).reshape(-1)
    if p.std() == 0 or r.std() == 0:
        return math.nan
    return float(np.corrcoef(p, r)[0, 1])
