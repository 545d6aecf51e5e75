"""Supervised fine-tuning (SFT) of a generative backbone: next-token cross-entropy on the
target semantic ID, L_GR(U, v) = -sum_l log P(t_l | U, t_<l) (GFlowGR eq. for L_GR).

AdamW with linear warm-up then cosine decay, gradient clipping, seeded shuffles; validation
NDCG@10 by trie-constrained beam search after every `eval_every` epochs, early stopping with
`patience`, the best weights kept. Checkpoints (`checkpoint.py`) are plain `save_pretrained`
folders plus the trainer state, written atomically; `resume=True` continues from `last/`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from gflowgr_dist.config import Config
from gflowgr_dist.data.schema import RecDataset
from gflowgr_dist.data.split import Splits, split_histories, training_sequences
from gflowgr_dist.decoding import ItemRanker
from gflowgr_dist.errors import ConfigError
from gflowgr_dist.eval.evaluate import EvalResult, evaluate
from gflowgr_dist.models.backbones import build_backbone, count_parameters, is_encoder_decoder
from gflowgr_dist.models.prompts import (
    collate_decoder_windows,
    collate_seq2seq,
    training_windows,
)
from gflowgr_dist.models.vocab import SidVocab
from gflowgr_dist.semantic_ids.table import SemanticIdTable
from gflowgr_dist.tracking import MetricsLogger
from gflowgr_dist.train import checkpoint

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a resumed run needs besides weights and optimizer."""

    epoch: int = 0
    step: int = 0
    best_metric: float = -1.0
    best_epoch: int = -1
    bad_evals: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    train_seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`train.device` as a torch device; asking for a GPU torch cannot see is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={name!r} but torch sees no GPU (torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}); use train.device=cpu or auto"
        )
    return torch.device(name)


class SftTrainer:
    """Trains one backbone on one prepared dataset (see module docstring)."""

    role = "sft"  # metric namespace and log prefix

    def __init__(
        self,
        cfg: Config,
        dataset: RecDataset,
        splits: Splits,
        table: SemanticIdTable,
        out_dir: Path,
        *,
        model: PreTrainedModel | None = None,
        vocab: SidVocab | None = None,
    ) -> None:
        self.cfg, self.dataset, self.splits, self.table = cfg, dataset, splits, table
        self.out_dir = Path(out_dir)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        seed_everything(cfg.run.seed)
        if model is None:
            model, vocab = build_backbone(
                cfg.model, table.codebook_sizes, table.level_names, cfg.data.max_history
            )
        self.device = resolve_device(cfg.train.device)
        self.model, self.vocab = model.to(self.device), vocab
        self.sid_tokens = vocab.item_tokens(table.codes)  # [I, L]
        self.user_tokens = [vocab.user_token(u) for u in dataset.user_ids]
        self.seq2seq = is_encoder_decoder(model)
        self.examples = self._examples()
        self.lengths = np.array(
            [len(e[1]) if self.seq2seq else len(e.items) for e in self.examples]
        )
        self.ranker = ItemRanker(model, vocab, table)
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
        )
        per_epoch = round(cfg.train.epoch_fraction * len(self.examples))
        steps = cfg.train.epochs * math.ceil(max(1, per_epoch) / cfg.train.batch_size)
        self.schedule = WarmupCosine(steps, cfg.train.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.state = TrainState()
        self.metrics = MetricsLogger(self.out_dir)
        logger.info(
            "sft: %s backbone, %d parameters, %d training %s per epoch",
            cfg.model.arch,
            count_parameters(model),
            len(self.examples),
            "examples" if self.seq2seq else "windows",
        )

    def _examples(self) -> list[Any]:
        if self.seq2seq:
            users, histories, targets, _ = split_histories(self.dataset, self.splits, "train")
            return list(zip(users.tolist(), histories, targets.tolist(), strict=True))
        users, sequences = training_sequences(self.dataset)
        cfg = self.cfg
        return training_windows(sequences, users, cfg.data.max_history, cfg.train.window_stride)

    def _collate(self, chunk: list[Any]) -> dict[str, torch.Tensor]:
        if self.seq2seq:
            users, histories, targets = zip(*chunk, strict=True)
            user_tokens = [self.user_tokens[u] for u in users]
            return collate_seq2seq(
                list(histories), np.asarray(targets), self.sid_tokens, self.vocab, user_tokens
            )
        user_tokens = [self.user_tokens[w.user] for w in chunk]
        return collate_decoder_windows(chunk, self.sid_tokens, self.vocab, user_tokens)

    def fit(self, *, resume: bool = False) -> dict[str, Any]:
        """Trains until the epoch budget, early stopping or `max_minutes`; keeps `best/`."""
        if resume:
            self._resume()
        while self.state.epoch < self.cfg.train.epochs:
            # One pass over the shuffled examples.
            started = time.perf_counter()
            out_of_budget = self._train_epoch()
            self.state.epoch_seconds.append(time.perf_counter() - started)
            self.state.epoch += 1

            # Validate, keep the best weights, decide on early stopping.
            stop = out_of_budget
            if self.state.epoch % self.cfg.train.eval_every == 0 or out_of_budget:
                stop |= self._validate()
            checkpoint.save(self.out_dir / "last", self._bundle())
            if stop:
                break
        self.metrics.close()
        return {
            "best_epoch": self.state.best_epoch,
            "best_val_ndcg@10": self.state.best_metric,
            "epochs": self.state.epoch,
            "steps": self.state.step,
            "seconds_per_epoch": float(np.mean(self.state.epoch_seconds or [0.0])),
            "train_minutes": self.state.train_seconds / 60,
            "parameters": count_parameters(self.model),
        }

    def _fit_schedule_to_budget(self) -> None:
        """Shrinks the cosine horizon so the lr reaches 0 when `max_minutes` of training is up.

        Without this a time cap cuts the schedule mid-way, at a high lr, and the model never
        gets the low-lr steps that give most of the final quality. The step rate is measured
        on this run's own steps (validation time excluded), re-estimated as training goes on.
        """
        budget = self.cfg.train.max_minutes
        if not budget or self.state.step < 20:
            return
        rate = self.state.step / max(self.state.train_seconds, 1e-9)  # steps per second
        fits = int(rate * 60 * budget)
        if fits < self.schedule.total_steps:
            self.schedule.total_steps = max(fits, self.state.step + 1)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The example indices of each batch of `epoch`, in order (the same in every process:
        the distributed driver and resumed runs cut epochs with this)."""
        cfg = self.cfg.train
        rng = np.random.default_rng([self.cfg.run.seed, epoch])
        return length_bucketed_batches(
            self.lengths, cfg.batch_size, rng, fraction=cfg.epoch_fraction
        )

    def _train_epoch(self) -> bool:
        """One epoch; returns True when the step horizon (epochs or time budget) is used up."""
        cfg = self.cfg.train
        batches = self.epoch_batches(self.state.epoch)
        self.model.train()
        tokens, window_start = 0, time.perf_counter()
        bar = tqdm(
            batches,
            desc=f"sft epoch {self.state.epoch + 1}",
            leave=False,
            disable=not self.cfg.logging.progress,
        )
        for members in bar:
            # Forward and backward on one batch (a loss of None skips the step).
            step_started = time.perf_counter()
            loss, extra = self._loss([self.examples[i] for i in members])
            if loss is None:
                continue
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self._trained_parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.state.step += 1
            tokens += int(extra.pop("tokens"))
            self.state.train_seconds += time.perf_counter() - step_started
            if self.state.step in (20, 100) or self.state.step % 500 == 0:
                self._fit_schedule_to_budget()

            # Log one line per `log_every` steps.
            if self.state.step % cfg.log_every == 0:
                elapsed = time.perf_counter() - window_start
                extra |= {"grad_norm": grad_norm.item(), "tokens_per_s": tokens / elapsed}
                self._log_step(loss.item(), extra)
                tokens, window_start = 0, time.perf_counter()
            if self.state.step >= self.schedule.total_steps:
                logger.info(
                    "%s: schedule ends at step %d (%.1f training minutes)",
                    self.role,
                    self.state.step,
                    self.state.train_seconds / 60,
                )
                return True
        return False

    def _loss(self, chunk: list[Any]) -> tuple[torch.Tensor | None, dict[str, float]]:
        """SFT: next-token cross-entropy of one batch; the dict carries `tokens` and extras."""
        batch = {k: v.to(self.device) for k, v in self._collate(chunk).items()}
        return self.model(**batch).loss, {"tokens": float(batch["attention_mask"].sum())}

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _log_step(self, loss: float, extra: dict[str, float]) -> None:
        """One line with fixed fields per logging step; every value to the metrics files."""
        lr = self.scheduler.get_last_lr()[0]
        fields = {"loss": loss, **extra, "lr": lr, "epoch": self.state.epoch + 1}
        text = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        logger.info("%s step=%d %s", self.role, self.state.step, text)
        self.metrics.log(self.state.step, {f"{self.role}/{k}": v for k, v in fields.items()})

    def _validate(self) -> bool:
        """Evaluates on validation; returns True when patience is exhausted."""
        result = self.evaluate("valid", max_users=self.cfg.train.max_eval_users)
        ndcg = result.summary["ndcg@10"]
        improved = ndcg > self.state.best_metric
        if improved:
            self.state.best_metric, self.state.best_epoch = ndcg, self.state.epoch
            self.state.bad_evals = 0
            checkpoint.save(self.out_dir / "best", self._bundle())
        else:
            self.state.bad_evals += 1
        logger.info(
            "epoch=%d val_ndcg@10=%.4f val_recall@10=%.4f best=%.4f (epoch %d) epoch_s=%.1f",
            self.state.epoch,
            ndcg,
            result.summary["recall@10"],
            self.state.best_metric,
            self.state.best_epoch,
            self.state.epoch_seconds[-1],
        )
        self.metrics.log(
            self.state.step,
            {
                f"{self.role}/val_ndcg@10": ndcg,
                f"{self.role}/val_recall@10": result.summary["recall@10"],
                f"{self.role}/epoch_seconds": self.state.epoch_seconds[-1],
                f"{self.role}/epoch": self.state.epoch,
                **self._validation_extras(),
            },
        )
        return self.state.bad_evals >= self.cfg.train.patience

    def _validation_extras(self) -> dict[str, float]:
        """Further validation metrics a subclass adds (GFlowGR: flow calibration)."""
        return {}

    def evaluate(
        self, split: str, *, max_users: int | None = None, per_user_path: Path | None = None
    ) -> EvalResult:
        """Full-ranking metrics of the current weights on one split."""
        return evaluate(
            self.rank_fn(),
            self.dataset,
            self.splits,
            split,
            self.cfg.eval,
            max_users=max_users,
            seed=self.cfg.run.seed,
            per_user_path=per_user_path,
        )

    def rank_fn(self):
        cfg = self.cfg.eval

        def rank(histories, exclude, k):
            return self.ranker.rank_all(
                histories,
                k,
                ranker=cfg.ranker,
                beam_width=cfg.beam_width,
                batch_size=cfg.batch_size,
                exclude=exclude,
                progress=self.cfg.logging.progress,
                trie_normalised=cfg.trie_normalised,
            ).items

        return rank

    def _bundle(self) -> checkpoint.Bundle:
        return checkpoint.Bundle(
            model=self.model,
            vocab=self.vocab,
            table=self.table,
            config=self.cfg,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=self.state.__dict__,
            heads=self._heads(),
        )

    def _heads(self) -> dict[str, torch.nn.Module]:
        """Trained modules besides the backbone (none for SFT)."""
        return {}

    def _resume(self) -> None:
        folder = self.out_dir / "last"
        state = checkpoint.load_training_state(
            folder, self.model, self.optimizer, self.scheduler, self._heads()
        )
        self.state = TrainState(**state)
        logger.info(
            "sft: resumed from %s at epoch %d, step %d", folder, self.state.epoch, self.state.step
        )


def _fmt(value: float) -> str:
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e6):
        return str(int(value))
    return f"{value:.4g}"


def length_bucketed_batches(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    *,
    fraction: float = 1.0,
    pool_batches: int = 50,
) -> list[np.ndarray]:
    """Shuffled batches of similar-length examples, so little of each batch is padding.

    Examples are shuffled, cut into pools of `pool_batches` batches, sorted by length inside a
    pool, batched, and the batches shuffled again: batch contents stay random across pools while
    lengths within a batch are close (Beauty's histories range from 3 to 20 items).
    """
    order = rng.permutation(len(lengths))[: max(1, round(fraction * len(lengths)))]
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class WarmupCosine:
    """lr factor: linear warm-up to the base lr, then cosine decay to 0 at `total_steps`.

    A callable object rather than a closure so that `LambdaLR.state_dict()` saves
    `total_steps`, which the time budget may shrink during training (resume keeps it).
    """

    def __init__(self, total_steps: int, warmup_ratio: float) -> None:
        self.total_steps = max(1, total_steps)
        self.warmup = max(1, int(self.total_steps * warmup_ratio))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total_steps - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
