"""A process SIGKILLed in the middle of writing a checkpoint: the previous checkpoint loads (for
evaluation and for --resume), the torn write is ignored with a warning and removed."""

from __future__ import annotations

import logging
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gflowgr_dist.errors import DataError
from gflowgr_dist.train import checkpoint

HELPER = Path(__file__).with_name("torn_checkpoint_run.py")


def _killed_while_saving(out: Path, when: str) -> str:
    done = subprocess.run(
        [sys.executable, str(HELPER), str(out), when], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr[-3000:]
    return next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("A "))


@pytest.mark.parametrize("when", ["mid-write", "between-renames"])
def test_kill_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path, caplog, when):
    digest_a = _killed_while_saving(tmp_path, when)
    leftovers = sorted(p.name for p in tmp_path.glob(".last.*"))
    if when == "mid-write":
        assert (tmp_path / "last").is_dir() and leftovers and ".last.old" not in leftovers
    else:
        assert not (tmp_path / "last").exists() and ".last.old" in leftovers
    with caplog.at_level(logging.WARNING, logger="gflowgr_dist.train.checkpoint"):
        model, *_ = checkpoint.load_model(tmp_path / "last")
    assert checkpoint.weights_digest(model) == digest_a
    assert "torn checkpoint" in caplog.text or "was being replaced" in caplog.text
    assert list(tmp_path.glob(".last.*")) == []  # nothing torn is left to confuse a later run
    # The training state of A is there too: --resume would continue from it.
    blob = torch.load(tmp_path / "last/trainer_state.pt", weights_only=True)
    assert blob["state"]["epoch"] == 1
    # Weights travel in safetensors only; the one torch file holds plain training state.
    files = [p for p in (tmp_path / "last").rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".parquet", ".yaml", ".pt"}
    assert [p.name for p in files if p.suffix == ".pt"] == ["trainer_state.pt"]


def test_trainer_state_holding_pickled_objects_is_refused(tmp_path):
    folder = tmp_path / "last"
    (folder / "model").mkdir(parents=True)

    class Payload:
        def __reduce__(self):
            return (print, ("this would run on load",))

    (folder / "trainer_state.pt").write_bytes(pickle.dumps({"state": Payload()}))
    with pytest.raises(DataError, match="refusing to load .*trainer_state.pt"):
        checkpoint.load_training_state(folder, torch.nn.Linear(1, 1), None, None)
