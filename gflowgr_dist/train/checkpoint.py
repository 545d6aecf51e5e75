"""Checkpoints that plain transformers can load, written atomically.

A checkpoint folder holds:

- `model/`: `save_pretrained` output (config.json + model.safetensors), loadable with
  `AutoModelForCausalLM` / `AutoModelForSeq2SeqLM.from_pretrained` and no code of ours;
- `sid_table.parquet`, `semantic_ids.json`: the item <-> semantic-ID table the model decodes;
- `vocab.json`: how codes map to token ids; `config.yaml`: the run's resolved config;
- `heads.safetensors` (GFlowGR): the log Z / flow heads and learnable reward fusion;
- `adapter/` (GFlowGR with `gfn.lora_rank`): the LoRA adapter as a PEFT folder; `model/` then
  holds the merged weights, and a resume loads the adapter onto the same frozen base;
- `trainer_state.pt`: optimizer, scheduler, RNG states and counters, read back with
  `torch.load(weights_only=True)` (tensors and plain containers only; no pickle of objects).

`save` writes everything into a temporary sibling folder `.<name>.<random>` and then renames:
the old folder to `.<name>.old`, the new one into place, and deletes the old. A process killed
at any moment leaves either the previous checkpoint or the new one complete: `recover` (called
before every load) finds which, puts it back under `<name>` if the kill fell between the two
renames, and deletes the torn temporary folders with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel

from gflowgr_dist.config import Config
from gflowgr_dist.errors import DataError
from gflowgr_dist.models import lora
from gflowgr_dist.models.vocab import SidVocab
from gflowgr_dist.semantic_ids.table import SemanticIdTable

logger = logging.getLogger(__name__)


@dataclass
class Bundle:
    """Everything a checkpoint stores."""

    model: PreTrainedModel
    vocab: SidVocab
    table: SemanticIdTable
    config: Config
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    state: dict[str, Any] | None = None
    heads: dict[str, torch.nn.Module] | None = None


def save(folder: Path, bundle: Bundle) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _save_model(bundle.model, tmp)
        bundle.table.save(tmp)
        (tmp / "vocab.json").write_text(json.dumps(bundle.vocab.to_dict(), indent=2))
        (tmp / "config.yaml").write_text(bundle.config.to_yaml())
        if bundle.heads:
            save_heads(tmp / "heads.safetensors", bundle.heads)
        if bundle.optimizer is not None:
            torch.save(_trainer_state(bundle), tmp / "trainer_state.pt")
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _save_model(model: PreTrainedModel, folder: Path) -> None:
    """`model/` as plain transformers reads it; a LoRA model merged, its adapter beside it."""
    if not lora.has_lora(model):
        model.save_pretrained(folder / "model", safe_serialization=True)
        return
    lora.save_plain(model, folder / "model", merged=True)
    lora.save_peft_adapter(model, folder / "adapter")


def restore_weights(model: PreTrainedModel, folder: Path) -> None:
    """Loads the weights of checkpoint `folder` into `model` (a LoRA model: merged, B = 0)."""
    saved = load_model(folder)[0].state_dict()
    if lora.has_lora(model):
        lora.load_plain_state(model, saved)
    else:
        model.load_state_dict(saved)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights (names and bytes, in name order): equal iff bit-identical.

    What a resumed or restarted run is compared with to prove it reached the same state.
    """
    sha = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        sha.update(key.encode())
        sha.update(value.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def recover(folder: Path) -> Path:
    """Makes `folder` the last complete checkpoint again after a kill in the middle of `save`.

    - `.<name>.<random>` folders are writes that never finished: deleted, with a warning;
    - `<name>` missing but `.<name>.old` present: the kill fell between the two renames, and
      the old folder is the last complete checkpoint: renamed back;
    - both present: the new one had landed; the old one is deleted.
    """
    folder = Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    if not folder.parent.is_dir():
        return folder
    for torn in folder.parent.glob(f".{folder.name}.*"):
        if torn != old and torn.is_dir():
            logger.warning(
                "checkpoint: ignoring torn checkpoint %s (a write that never finished); "
                "deleting it and resuming from %s",
                torn,
                folder if folder.exists() else old,
            )
            shutil.rmtree(torn, ignore_errors=True)
    if old.is_dir():
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            logger.warning(
                "checkpoint: %s was being replaced when the run stopped; restoring it", folder
            )
            old.rename(folder)
    return folder


def save_heads(path: Path, heads: dict[str, torch.nn.Module]) -> None:
    """Every head's tensors in one safetensors file, keyed `<head>.<parameter>`."""
    from safetensors.torch import save_file

    tensors = {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name, module in heads.items()
        for key, value in module.state_dict().items()
    }
    save_file(tensors, str(path))


def load_heads(path: Path, heads: dict[str, torch.nn.Module]) -> None:
    """Loads what `save_heads` wrote into `heads` (strict: every key must match)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    for name, module in heads.items():
        prefix = f"{name}."
        own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(own)


def _trainer_state(bundle: Bundle) -> dict[str, Any]:
    return {
        "optimizer": bundle.optimizer.state_dict(),
        "scheduler": bundle.scheduler.state_dict() if bundle.scheduler is not None else None,
        "state": dict(bundle.state or {}),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": json.dumps(np.random.get_state(legacy=False), default=_jsonable),
            "python": json.dumps(random.getstate()),
        },
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(type(value))


def load_model(folder: Path) -> tuple[PreTrainedModel, SidVocab, SemanticIdTable, Config]:
    """Model, vocabulary, ID table and config of a checkpoint folder.

    Raises:
        DataError: the folder is not a checkpoint written by `save`.
    """
    folder = recover(Path(folder))
    if not (folder / "model" / "config.json").is_file() or not (folder / "vocab.json").is_file():
        raise DataError(
            f"{str(folder)!r} is not a gflowgr checkpoint (no model/config.json or vocab.json); "
            "pass a folder written by `gflowgr sft` (e.g. outputs/<run>/sft/best)"
        )
    config = json.loads((folder / "model" / "config.json").read_text())
    auto = AutoModelForSeq2SeqLM if config.get("is_encoder_decoder") else AutoModelForCausalLM
    model = auto.from_pretrained(str(folder / "model"))
    vocab = SidVocab.from_dict(json.loads((folder / "vocab.json").read_text()))
    table = SemanticIdTable.load(folder)
    from gflowgr_dist.config import load_config

    cfg = load_config([folder / "config.yaml"])
    return model, vocab, table, cfg


def load_training_state(
    folder: Path,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    heads: dict[str, torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Restores weights, heads, optimizer, scheduler and RNG from `folder`; returns counters."""
    folder = recover(Path(folder))
    state_path = folder / "trainer_state.pt"
    if not state_path.is_file():
        raise DataError(
            f"cannot resume: {str(state_path)!r} does not exist; start without --resume"
        )
    try:  # tensors and plain containers only: a file holding pickled objects is refused
        blob = torch.load(state_path, weights_only=True)
    except pickle.UnpicklingError as err:
        raise DataError(
            f"refusing to load {str(state_path)!r}: it holds objects beyond tensors and plain "
            f"containers ({str(err).splitlines()[0]}); only load checkpoints this program wrote"
        ) from None
    if lora.has_lora(model):  # the base is the frozen start checkpoint: only the adapter moved
        lora.load_adapter(model, lora.read_peft_adapter(folder / "adapter"))
    else:
        model.load_state_dict(type(model).from_pretrained(str(folder / "model")).state_dict())
    if heads:
        load_heads(folder / "heads.safetensors", heads)
    optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None and blob["scheduler"] is not None:
        scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"]["torch"])
    np_state = json.loads(blob["rng"]["numpy"])
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    version, internal, gauss = json.loads(blob["rng"]["python"])
    random.setstate((version, tuple(internal), gauss))
    return blob["state"]
