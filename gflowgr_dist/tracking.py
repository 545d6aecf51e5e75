"""Metric sinks: JSONL on disk (what tests and reports read back) and TensorBoard.

Metric names are slash-namespaced by role (`sft/loss`, `sft/val_ndcg@10`, `learner/loss_tb`).
Each `log` call writes one JSON line `{"step": s, "time": t, name: value, ...}`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Appends metrics to `<folder>/metrics.jsonl` and, when available, TensorBoard."""

    def __init__(self, folder: Path, *, tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "metrics.jsonl"
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.folder / "tensorboard"))
            except ImportError:
                logger.warning("tensorboard is not installed; metrics go to JSONL only")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for name, value in metrics.items():
                if isinstance(value, int | float):
                    self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
