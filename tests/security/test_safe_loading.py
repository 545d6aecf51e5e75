"""No unsafe loading anywhere in the package: every torch file is read with weights_only=True,
YAML with safe_load, nothing is unpickled or eval'd, and checkpoints hold their weights in
safetensors. (The behaviour: tests/train/test_checkpoint_torn.py shows a trainer_state.pt with
a pickled object in it refused.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gflowgr_dist"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else "?"


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


FORBIDDEN = {
    "pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load",
    "yaml.load", "yaml.unsafe_load", "yaml.full_load", "marshal.loads", "eval", "exec",
}  # fmt: skip


def test_the_scan_sees_the_package():
    assert len(SOURCES) > 40
    assert any(_name(c.func) == "torch.load" for p in SOURCES for c in _calls(p))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_unsafe_loader_is_called(path):
    problems = []
    for call in _calls(path):
        name = _name(call.func)
        if name in FORBIDDEN:
            problems.append(f"line {call.lineno}: {name}()")
        if name == "torch.load" and _keyword(call, "weights_only") is not True:
            problems.append(f"line {call.lineno}: torch.load without weights_only=True")
        if name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") is True:
            problems.append(f"line {call.lineno}: np.load(allow_pickle=True)")
    assert problems == []
