"""LoRA for the fine-tuning stage: adapters injected in place, merged or shipped on their own.

GFlowGR fine-tunes an SFT checkpoint whose semantic-ID embeddings are already learned; with
`gfn.lora_rank` > 0 only low-rank adapters on the attention (and optionally MLP) projections
train, and the backbone stays frozen. The adapters are injected into the model object itself
(peft's low-level `inject_adapter_in_model`), so the model keeps its class and forward: the
trainer, the decoders and the KV-cached sampler see the same module tree with LoRA layers in it.

Three views of such a model:
- `adapter_state`: the adapter tensors only (what a weight sync ships after the first one);
- `plain_state`: base weights under the plain model's names, with the delta merged or not
  (`save_plain(merged=True)` writes checkpoints' `model/`, loadable by plain transformers);
- `save_peft_adapter`: the adapter as a PEFT folder (adapter_config.json +
  adapter_model.safetensors), which `peft.PeftModel.from_pretrained` and vLLM's `LoRARequest`
  both read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

ADAPTER = "default"  # peft's adapter name inside the injected layers
LORA_KEY = ".lora_"  # every adapter tensor's name holds it; no base tensor's does
BASE_KEY = ".base_layer."  # a wrapped layer's own weights


@dataclass(frozen=True)
class LoraSpec:
    """Rank, scale and target modules of the fine-tuning adapter (from `gfn.lora_*`)."""

    rank: int
    alpha: int
    targets: tuple[str, ...]

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def peft_config(self, **extra):
        """peft's `LoraConfig` for this adapter; `extra` adds or overrides its fields."""
        from peft import LoraConfig

        fields = {
            "r": self.rank,
            "lora_alpha": self.alpha,
            "target_modules": list(self.targets),
            "lora_dropout": 0.0,  # the sampler and the learner must see the same function
            "bias": "none",
        }
        return LoraConfig(**(fields | extra))


def lora_spec(gfn, arch: str) -> LoraSpec | None:
    """The adapter `gfn` asks for (None: full fine-tuning); default targets follow the arch."""
    if not gfn.lora_rank:
        return None
    default = ("q", "k", "v", "o") if arch == "t5" else ("q_proj", "k_proj", "v_proj", "o_proj")
    return LoraSpec(gfn.lora_rank, gfn.lora_alpha, tuple(gfn.lora_targets or default))


def inject_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Adds `spec`'s adapters to `model` in place and freezes everything else.

    LoRA's B starts at zero, so the injected model computes exactly what it did before.
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(spec.peft_config(), model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        param.requires_grad_(LORA_KEY in name)
    model.lora_spec = spec
    return model


def has_lora(model: nn.Module) -> bool:
    return getattr(model, "lora_spec", None) is not None


def is_adapter_only(state: dict[str, Tensor]) -> bool:
    """Whether a state dict holds adapter tensors and nothing else (a sync's payload)."""
    return bool(state) and all(LORA_KEY in key for key in state)


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors under the injected model's names (detached, not copied)."""
    return {k: v.detach() for k, v in model.state_dict().items() if LORA_KEY in k}


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def plain_state(model: nn.Module, *, merged: bool) -> dict[str, Tensor]:
    """Base weights under the names of the model without LoRA; `merged` adds B A x scale."""
    state = {
        k.replace(BASE_KEY, "."): v.detach()
        for k, v in model.state_dict().items()
        if LORA_KEY not in k
    }
    if merged:
        for name, layer in _lora_layers(model).items():
            key = f"{name}.weight"
            state[key] = state[key] + layer.get_delta_weight(ADAPTER).detach()
    return state


def save_plain(model: nn.Module, folder: Path, *, merged: bool) -> None:
    """Writes `plain_state(model, merged=...)` as a plain transformers model folder, without
    building a second model (save_pretrained takes the state dict; it pops from it, so the
    dict is its own)."""
    model.save_pretrained(folder, state_dict=plain_state(model, merged=merged))


def load_plain_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Loads plain (merged) weights into an injected model and zeroes its adapters' B.

    The model then computes what the plain weights compute (the state of a `best/` checkpoint
    restored into the trainer before its final evaluation).
    """
    injected = {}
    layers = _lora_layers(model)
    for key, value in state.items():
        owner = key.rsplit(".", 1)[0]
        injected[key.replace(f"{owner}.", f"{owner}.base_layer.") if owner in layers else key] = (
            value
        )
    missing, unexpected = model.load_state_dict(injected, strict=False)
    if unexpected or any(LORA_KEY not in key for key in missing):
        raise ValueError(
            f"plain weights do not fit the model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}"
        )
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B[ADAPTER].weight.zero_()


def load_adapter(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Loads exactly the model's adapter tensors (any other key, or one missing, is an error)."""
    own = {k for k in model.state_dict() if LORA_KEY in k}
    if set(state) != own:
        raise ValueError(
            f"adapter does not fit the model: {len(set(state) - own)} unexpected tensors (e.g. "
            f"{sorted(set(state) - own)[:2]}), {len(own - set(state))} missing (e.g. "
            f"{sorted(own - set(state))[:2]}); were learner and engine given the same gfn.lora_*?"
        )
    model.load_state_dict(state, strict=False)


def save_peft_adapter(model: nn.Module, folder: Path) -> Path:
    """Writes the adapter as a PEFT folder (read by peft and by vLLM's `LoRARequest`)."""
    from safetensors.torch import save_file

    spec: LoraSpec = model.lora_spec
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "base_model.model." + k.replace(f".{ADAPTER}.", "."): v.contiguous()
        for k, v in adapter_state(model).items()
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = spec.peft_config().to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    config.update(peft_type="LORA", task_type="CAUSAL_LM", base_model_name_or_path=None)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, default=str))
    return folder


def read_peft_adapter(folder: Path) -> dict[str, Tensor]:
    """The tensors `save_peft_adapter` wrote, under the injected model's names."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(folder) / "adapter_model.safetensors"))
    out = {}
    for key, value in tensors.items():
        name = key.removeprefix("base_model.model.")
        for part in ("lora_A", "lora_B"):
            name = name.replace(f".{part}.weight", f".{part}.{ADAPTER}.weight")
        out[name] = value
    return out
