"""Training and full-ranking evaluation of SASRec on the leave-one-out split.

Training reads training data only: for each user the prefix before the validation target
(positions < n - 2), trained as next-item prediction at every position. Sequences longer than
`max_len` are cut into windows so every training target is used once, rather than keeping only
the most recent `max_len` items as the original implementation does.

Model selection uses validation NDCG@10 under full ranking of the catalogue, with early
stopping; the best epoch's weights are restored. History items are not masked at evaluation
(the TIGER / LETTER protocol): a model that recommends an already-seen item is simply wrong.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gflowgr_dist.data.schema import RecDataset
from gflowgr_dist.data.split import Splits, split_histories
from gflowgr_dist.eval.metrics import DEFAULT_KS, rank_metrics, ranked_from_scores, summarize
from gflowgr_dist.models.sasrec import SasRec, SasRecConfig

logger = logging.getLogger(__name__)

ScoreFn = Callable[[list[np.ndarray]], torch.Tensor | np.ndarray]


def training_windows(
    dataset: RecDataset, max_len: int, stride: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Next-item training windows over each user's training prefix (positions < n - 2).

    A prefix p of length m gives inputs p[:-1] and targets p[1:]. When m - 1 > max_len the
    pairs are cut into windows ending at the last pair and stepping back by `stride`; a target
    already trained in a later window has its loss masked, so each target counts exactly once
    and (with stride < max_len) keeps at least max_len - stride items of context.

    Args:
        dataset: the interactions.
        max_len: window width.
        stride: step between window ends; None means max_len.

    Returns:
        (inputs [N, max_len], targets [N, max_len]): shifted item ids (item + 1), left-padded
        with 0; a target of 0 takes no loss.
    """
    stride = stride or max_len
    offsets = dataset.user_offsets()
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for user in range(dataset.num_users):
        start, stop = offsets[user], offsets[user + 1]
        prefix = dataset.items[start : start + max(stop - start - 2, 0)] + 1
        if prefix.size < 2:
            continue
        for x, y in _windows(prefix[:-1], prefix[1:], max_len, stride):
            inputs.append(x)
            targets.append(y)
    if not inputs:
        return np.zeros((0, max_len), np.int64), np.zeros((0, max_len), np.int64)
    return np.stack(inputs), np.stack(targets)


def _windows(
    x: np.ndarray, y: np.ndarray, max_len: int, stride: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Left-padded (input, target) windows of one user, newest first (see training_windows)."""
    out = []
    end, covered_from = len(x), len(x)
    while True:
        begin = max(end - max_len, 0)
        row_x = np.zeros(max_len, np.int64)
        row_y = np.zeros(max_len, np.int64)
        row_x[max_len - (end - begin) :] = x[begin:end]
        new_y = y[begin:end].copy()
        new_y[covered_from - begin :] = 0  # trained in a later window
        row_y[max_len - (end - begin) :] = new_y
        out.append((row_x, row_y))
        covered_from = begin
        if begin == 0:
            return out
        end -= stride


def evaluate_scores(
    score_fn: ScoreFn,
    dataset: RecDataset,
    splits: Splits,
    split: str = "test",
    exclude_history: bool = False,
    *,
    batch_size: int = 512,
    k: int = 20,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Ranks the full catalogue for every example of a split and scores the ranking.

    Args:
        score_fn: histories -> scores of every item, [B, I].
        dataset: the interactions.
        splits: the leave-one-out split.
        split: "valid" or "test".
        exclude_history: mask every item the user had before the target (off by default,
            following TIGER / LETTER).
        batch_size: users scored at once.
        k: length of the returned lists; must be >= 20 for the default cut-offs.

    Returns:
        (per-user metrics {"recall@k", "ndcg@k"} for k in 1/5/10/20, ranked items [U, k])
    """
    users, histories, targets, _ = split_histories(dataset, splits, split)
    index = splits.select(split)
    offsets = dataset.user_offsets()
    ranked = np.full((len(users), k), -1, dtype=np.int64)
    for start in range(0, len(users), batch_size):
        stop = min(start + batch_size, len(users))
        scores = score_fn(histories[start:stop])  # [b, I]
        exclude = None
        if exclude_history:
            base = offsets[users[start:stop]]
            ends = base + splits.target_index[index[start:stop]]
            exclude = [dataset.items[b:e] for b, e in zip(base, ends, strict=True)]
        ranked[start:stop] = ranked_from_scores(scores, k, exclude)
    return rank_metrics(ranked, targets, DEFAULT_KS), ranked


def train_sasrec(
    dataset: RecDataset,
    splits: Splits,
    cfg: SasRecConfig,
    *,
    log_dir: Path | None = None,
    progress: bool = False,
) -> tuple[SasRec, dict[str, Any]]:
    """Trains SASRec with early stopping on validation NDCG@10 (full ranking).

    Args:
        dataset: the interactions.
        splits: the leave-one-out split (its validation examples select the model).
        cfg: model and training settings.
        log_dir: when given, one JSON line per epoch is appended to log_dir/metrics.jsonl.
        progress: show a tqdm bar over each epoch's batches.

    Returns:
        (the model with the best epoch's weights, in eval mode; a summary with best_epoch,
        epochs_run, seconds_per_epoch, num_windows, the best validation metrics and the
        per-epoch history)
    """
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    inputs, targets = training_windows(dataset, cfg.max_len, cfg.window_stride)
    model = SasRec(dataset.num_items, cfg).to(cfg.device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )
    logger.info(
        "sasrec-%s: %d training windows of %d, %d items",
        cfg.loss,
        len(inputs),
        cfg.max_len,
        dataset.num_items,
    )

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"ndcg": -1.0, "epoch": 0, "state": None}
    for epoch in range(1, cfg.epochs + 1):
        # One pass over the shuffled training windows.
        started = time.perf_counter()
        loss = _train_epoch(model, optimizer, inputs, targets, cfg, generator, progress, epoch)

        # Validation by full ranking of the catalogue.
        per_user, _ = evaluate_scores(
            model.scores, dataset, splits, "valid", batch_size=cfg.eval_batch_size
        )
        valid = summarize(per_user)
        record = {
            "epoch": epoch,
            "sasrec/loss": loss,
            "sasrec/val_ndcg@10": valid["ndcg@10"],
            "sasrec/val_recall@10": valid["recall@10"],
            "sasrec/epoch_seconds": time.perf_counter() - started,
        }
        history.append(record)
        _report(record, log_dir)

        # Keep the best weights; stop once patience runs out.
        if valid["ndcg@10"] > best["ndcg"]:
            best = {"ndcg": valid["ndcg@10"], "epoch": epoch, "state": _copy_state(model)}
        elif epoch - best["epoch"] >= cfg.patience:
            logger.info("early stop at epoch %d (best %d)", epoch, best["epoch"])
            break

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return model, _summary(history, best, len(inputs))


def _train_epoch(
    model: SasRec,
    optimizer: torch.optim.Optimizer,
    inputs: np.ndarray,
    targets: np.ndarray,
    cfg: SasRecConfig,
    generator: torch.Generator,
    progress: bool,
    epoch: int,
) -> float:
    """One epoch of minibatch steps; returns the mean loss over batches."""
    model.train()
    order = torch.randperm(len(inputs), generator=generator).numpy()
    batches = range(0, len(inputs), cfg.batch_size)
    losses = []
    for start in tqdm(batches, desc=f"sasrec epoch {epoch}", disable=not progress, leave=False):
        # Gather the batch.
        rows = order[start : start + cfg.batch_size]
        x = torch.from_numpy(inputs[rows]).to(cfg.device)  # [B, T]
        y = torch.from_numpy(targets[rows]).to(cfg.device)  # [B, T]

        # Step on the next-item loss.
        loss = model.loss(x, y, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def _copy_state(model: SasRec) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _report(record: dict[str, float], log_dir: Path | None) -> None:
    """Logs one epoch and appends it to log_dir/metrics.jsonl when a folder is given."""
    logger.info(
        "epoch %d loss %.4f val ndcg@10 %.4f recall@10 %.4f (%.1fs)",
        record["epoch"],
        record["sasrec/loss"],
        record["sasrec/val_ndcg@10"],
        record["sasrec/val_recall@10"],
        record["sasrec/epoch_seconds"],
    )
    if log_dir is None:
        return
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def _summary(
    history: list[dict[str, float]], best: dict[str, Any], num_windows: int
) -> dict[str, Any]:
    best_record = history[best["epoch"] - 1] if best["epoch"] else {}
    seconds = [r["sasrec/epoch_seconds"] for r in history]
    return {
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "num_windows": num_windows,
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else 0.0,
        "sasrec/best_val_ndcg@10": best_record.get("sasrec/val_ndcg@10", float("nan")),
        "sasrec/best_val_recall@10": best_record.get("sasrec/val_recall@10", float("nan")),
        "history": history,
    }
