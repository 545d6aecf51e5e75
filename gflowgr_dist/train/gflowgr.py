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
from gflowgr_dist.data.split import Splits, split_histories
from gflowgr_dist.errors import ConfigError
from gflowgr_dist.gfn import losses, preference
from gflowgr_dist.gfn.heads import FlowHead, LogZHead
from gflowgr_dist.gfn.reward import RewardModel
from gflowgr_dist.gfn.scoring import ScoredTrajectories, score_decoder_windows, score_seq2seq
from gflowgr_dist.gfn.trajectories import TrajectoryBatch, TrajectorySource, trajectory_rewards
from gflowgr_dist.models.lora import inject_lora, lora_spec
from gflowgr_dist.models.prompts import Window
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
        self.source = TrajectorySource(gfn, dataset, self.ranker, cf_model, seq2seq=self.seq2seq)
        self.reward = RewardModel(gfn.reward, table.codes)
        hidden = (
            self.model.config.hidden_size
            if hasattr(self.model.config, "hidden_size")
            else (self.model.config.d_model)
        )
        self.log_z_head = LogZHead(hidden).to(self.device) if self._uses_log_z_head() else None
        flows = gfn.algorithm in ("db", "subtb")
        self.flow_head = FlowHead(hidden).to(self.device) if flows else None
        self.log_z_ready = False
        self.reference = None
        if gfn.algorithm in ("dpo", "sdpo", "grpo"):
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._add_adapter()
        self._build_optimizer()

    # --- set-up ---------------------------------------------------------------------------

    def _add_adapter(self) -> None:
        """With `gfn.lora_rank`: LoRA adapters injected into the backbone, which freezes."""
        spec = lora_spec(self.gfn, self.cfg.model.arch)
        if spec is None:
            return
        try:
            inject_lora(self.model, spec)
        except ValueError as err:
            raise ConfigError(
                f"gfn.lora_targets={list(spec.targets)}: {str(err).splitlines()[0]}; name "
                "modules of the backbone (e.g. q_proj, v_proj for decoders, q, v for t5)"
            ) from None

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

    # --- one step -------------------------------------------------------------------------

    def _train_epoch(self) -> bool:
        # Sampling streams are re-derived per epoch, so a resume at an epoch boundary replays
        # exactly what an uninterrupted run would have drawn.
        self.rng = np.random.default_rng([self.cfg.run.seed, 7, self.state.epoch])
        self.generator = torch.Generator().manual_seed(self.cfg.run.seed * 1000 + self.state.epoch)
        return super()._train_epoch()

    def _loss(self, chunk: list[Any]) -> tuple[Tensor | None, dict[str, float]]:
        """Rollout, reward and learner stages of one step, in this process."""
        progress = self.state.step / max(1, self.schedule.total_steps)
        ids = np.arange(len(chunk))
        batch = self.source.build(chunk, ids, progress, self.rng, self.generator, self.state.step)
        return self.learner_loss(chunk, batch)

    def learner_loss(
        self, chunk: list[Any], batch: TrajectoryBatch, log_rewards: Tensor | None = None
    ) -> tuple[Tensor | None, dict[str, float]]:
        """The learner's loss on a rolled-out batch (log P_F recomputed under current weights).

        `log_rewards` [E, T] comes from a reward stage when one ran elsewhere; without it the
        rewards are computed here. Returns (None, {}) for a step skipped on a non-finite value.
        """
        _, histories, _ = self.source.unpack(chunk, batch.positions)
        scored = self._score(chunk, histories, batch, batch.items)
        log_pf_sum = scored.log_pf.sum(-1)
        rewards = None
        if log_rewards is None or self.gfn.reward.score == "lm" or self.gfn.algorithm == "grpo":
            log_rewards, rewards = trajectory_rewards(self.reward, batch, log_pf_sum)
            rewards = rewards.to(self.device)
        log_rewards = log_rewards.to(self.device)  # the reward stage runs on the CPU
        if not self._finite({"log_rewards": log_rewards, "log_pf": scored.log_pf}):
            return None, {}
        loss, extra = self._objective(chunk, histories, batch, scored, log_rewards, rewards)
        if not self._finite({"loss": loss}):
            return None, {}
        extra |= self._step_metrics(log_rewards, batch)
        return loss, extra | {"tokens": float(batch.num_trajectories * self.vocab.num_levels)}

    def _score(
        self,
        chunk: list[Any],
        histories: list[np.ndarray],
        batch: TrajectoryBatch,
        items: np.ndarray,
        model=None,
    ) -> ScoredTrajectories:
        """One packed forward pass over `items` [E, T] (column 0 the positives) of the
        examples of `batch` (gfn/scoring.py)."""
        model = model or self.model
        codes = self.table.codes
        if self.seq2seq:
            return score_seq2seq(
                model, histories, items, self.sid_tokens, self.vocab, self.trie, codes
            )
        return score_decoder_windows(
            model,
            chunk,
            items[:, 1:],
            self.sid_tokens,
            self.vocab,
            self.trie,
            codes,
            positions=batch.positions,
        )

    def _objective(
        self,
        chunk: list[Any],
        histories: list[np.ndarray],
        batch: TrajectoryBatch,
        scored: ScoredTrajectories,
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
                ref = self._score(chunk, histories, batch, batch.items, model=self.reference)
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

    def _step_metrics(self, log_rewards: Tensor, batch: TrajectoryBatch) -> dict[str, float]:
        out = {"log_reward_pos": log_rewards[:, 0].mean().item()}
        if log_rewards.shape[1] > 1:
            out["log_reward_aug"] = log_rewards[:, 1:].mean().item()
        used = batch.strategies.reshape(-1)
        for index, name in enumerate(STRATEGIES):
            out[f"mix_{name}"] = float((used == index).mean()) if used.size else 0.0
        out["policy_lag"] = float(self.state.step - batch.policy_version)
        schedule = self.source.sampler.schedule(batch.progress)
        out["cf_band_low"], out["cf_band_high"] = schedule.cf_band
        return out

    def _train_batches_per_epoch(self) -> list[np.ndarray]:
        return self.epoch_batches(0)

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
        rng = np.random.default_rng([self.cfg.run.seed, 11])
        windows = [
            Window(int(u), np.append(h, t), 1)
            for u, h, t in zip(users, histories, targets, strict=True)
        ]
        chunk = list(zip(users.tolist(), histories, targets.tolist(), strict=True))
        chunk = chunk if self.seq2seq else windows
        batch = self.source.build(chunk, keep, 1.0, rng, num_augmented=7)
        was_training = self.model.training
        self.model.eval()
        scored = self._score(chunk, histories, batch, batch.items)
        self.model.train(was_training)
        items = batch.items
        log_rewards, _ = trajectory_rewards(self.reward, batch, scored.log_pf.sum(-1))
        log_p = scored.log_pf.sum(-1).double().cpu().numpy()  # [E, T]
        log_r = log_rewards.double().cpu().numpy()  # [E, T]
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
