"""Shared fixtures: small datasets built in-test, and the optional ../shared data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from gflowgr_dist.config import SyntheticConfig
from gflowgr_dist.data.synthetic import load_synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BEAUTY = SHARED / "data" / "amazon-beauty-letter"


@pytest.fixture(scope="session")
def beauty_dir() -> Path:
    """LETTER's Beauty files; CI has ../shared beside the clone, a user's clone does not."""
    if not (BEAUTY / "Beauty.inter.json").is_file():
        pytest.skip(f"LETTER Beauty data not found at {BEAUTY} (only CI ships ../shared)")
    return BEAUTY


@pytest.fixture(scope="session")
def ml100k_available() -> None:
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole is not installed: `pip install --no-deps recbole==1.2.1`")


@pytest.fixture(scope="session")
def synthetic():
    return load_synthetic(SyntheticConfig(num_users=60, num_items=40, num_clusters=4), seed=3)


@pytest.fixture
def synthetic_cli(tmp_path) -> list[str]:
    """CLI options of a tiny synthetic run in tmp_path (the benchmark tests start from it)."""
    overrides = {
        "run.output_dir": tmp_path,
        "logging.progress": "false",
        "model.preset": "tiny",
        "data.max_history": 8,
        "sasrec.epochs": 2,
    }
    options = ["--config", str(REPO / "configs/synthetic.yaml")]
    for key, value in overrides.items():
        options += ["--set", f"{key}={value}"]
    return options
