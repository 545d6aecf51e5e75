"""Config loading: overlays, overrides, and errors that name the key, the value and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gflowgr_dist.config import Config, load_config
from gflowgr_dist.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_ml100k_demo():
    cfg = load_config()
    assert cfg.data.source == "ml100k"
    assert cfg.semantic_ids.codebook_sizes == [32, 32, 32]


def test_files_overlay_in_order_and_set_wins(tmp_path):
    base = tmp_path / "a.yaml"
    base.write_text("data: {max_history: 10, kcore: 3}\nrun: {seed: 1}\n")
    top = tmp_path / "b.yaml"
    top.write_text("data: {max_history: 30}\n")
    cfg = load_config([base, top], ["run.seed=7", "semantic_ids.codebook_sizes=[4, 4]"])
    assert cfg.data.max_history == 30  # later file wins
    assert cfg.data.kcore == 3  # earlier keys survive an overlay
    assert cfg.run.seed == 7
    assert cfg.semantic_ids.codebook_sizes == [4, 4]


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(overrides=["data.source=synthetic", "embedding.encoder=hashing"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config([path]) == cfg


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")))
def test_every_preset_validates(preset):
    assert isinstance(load_config([preset]), Config)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.sorce=ml100k"], r"data\.sorce: unknown key; did you mean 'source'"),
        (["data.source=movielens"], r"data\.source = 'movielens'.*'ml100k', 'amazon'"),
        (["data.max_history=0"], r"data\.max_history = 0: Input should be greater than or"),
        (["run.seed=abc"], r"run\.seed = 'abc': Input should be a valid integer"),
        (["semantic_ids.codebook_sizes=[1, 70000]"], r"outside \[2, 65536\]"),
        (["data.source=amazon"], r"needs data\.path and data\.name"),
        (["semantic_ids.method=external"], r"needs data\.source='letter'"),
        (["nosection.key=1"], r"nosection: unknown key; .*allowed keys in the top level"),
        (
            [
                "gfn.lora_rank=4",
                "runtime.weight_sync=nccl",
                "runtime.engine=vllm",
                "runtime.rollout_gpus=1",
            ],
            r"gfn\.lora_rank=4 with runtime\.weight_sync='nccl'.*use runtime\.weight_sync: ",
        ),
        (["gfn.lora_rank=4", "model.lora_rank=8"], r"set model\.lora_rank: 0"),
        (["runtime.lora_sync=delta"], r"runtime\.lora_sync = 'delta'.*'adapter' or 'merged'"),
        (["train.device=gpu"], r"train\.device = 'gpu': String should match pattern"),
    ],
)
def test_bad_values_name_key_value_and_rule(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(overrides=overrides)


@pytest.mark.parametrize("override", ["novalue", "=3", "data..x=1", ".a=1"])
def test_malformed_set(override):
    with pytest.raises(ConfigError, match="not of the form section.key=value"):
        load_config(overrides=[override])


def test_set_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="run.seed is a value, not a section"):
        load_config(overrides=["run.seed=1", "run.seed.x=2"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config([bad])
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="not a mapping"):
        load_config([scalar])


def test_config_module_imports_nothing_heavy():
    code = (
        "import sys; import gflowgr_dist.config, gflowgr_dist.cli;"
        "heavy = [m for m in ('torch', 'ray', 'vllm', 'transformers') if m in sys.modules];"
        "print(heavy); sys.exit(bool(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dry_run_prints_resolved_config():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gflowgr_dist.cli",
            "run",
            "--config",
            "configs/ml100k.yaml",
            "--set",
            "data.max_history=7",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["data"]["max_history"] == 7
    assert resolved["run"]["output_dir"] == "outputs/ml100k"


def test_cli_reports_config_error_without_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "gflowgr_dist.cli", "prepare", "--set", "data.kcore=-1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "data.kcore = -1" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists()  # failed before any work


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epoks=1", "train.epoks: unknown key; did you mean 'epochs'?"),
        ("train.epochs=0", "train.epochs = 0: Input should be greater than or equal to 1"),
        ("train", "'train' is not of the form section.key=value"),
    ],
)
def test_finetune_overrides_are_checked_when_the_config_loads(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["run.finetune=true", f"run.finetune_overrides=[{override}]"])
    assert str(err.value).startswith("in run.finetune_overrides: ")
    assert expected in str(err.value)


def test_finetune_overrides_touch_only_the_finetune_stage():
    from gflowgr_dist.config import apply_overrides

    cfg = load_config([REPO / "configs/ml100k.yaml"])
    stage = apply_overrides(cfg, cfg.run.finetune_overrides)
    assert (cfg.train.epochs, cfg.train.lr) == (4, 1.0e-3)
    assert (stage.train.epochs, stage.train.lr, stage.train.epoch_fraction) == (1, 5.0e-4, 0.5)
