"""Property-based fuzzing of every loader and of the config with generated bad input.

Each case starts from a small valid input and damages it: truncated or garbled bytes, broken
JSON / gzip, missing or extra columns, wrong types, negative, huge and non-finite numbers,
unknown ids, emptied files. The property: `prepare` (load, split, write) either accepts the
input or raises our `GflowgrError`, whose message names the file and the problem (the CLI
prints it as one line, no traceback); no other exception escapes; and when it refuses, the data
an earlier `prepare` wrote into the same output folder is byte for byte unchanged.
Tallies per source (cases / clean errors / accepted) go to `FUZZ_TALLY`, printed at the end.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gflowgr_dist.config import load_config
from gflowgr_dist.errors import GflowgrError
from gflowgr_dist.pipeline import prepare

FUZZ_TALLY: Counter = Counter()
FUZZ = settings(
    max_examples=70,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same cases on every run: a failure reproduces
)
BAD_SCALARS = [
    "", " ", "nan", "NaN", "inf", "-inf", "-1", "-99999", "0", "1e309", "1e30",
    "99999999999999999999999999", "abc", "5.5.5", "\x00", "\u00e9", "\U0001f600", "null", "[]",
    "{}", "true", "0x1F", "1,5", "--", "\t", "|",
]  # fmt: skip
BAD_JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(BAD_SCALARS),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.sampled_from(["a", "b", "0"]), st.integers(-3, 3), max_size=2),
)


# --- valid starting points ------------------------------------------------------------------


def _item_line(i: int) -> str:
    flags = ["1" if g == i % 19 else "0" for g in range(19)]
    return "|".join([str(i), f"Film {i} (199{i % 10})", "01-Jan-1995", "", "http://x", *flags])


def _grouplens() -> dict[str, str]:
    data = [f"{u}\t{10 + (u * 3 + k) % 8}\t{1 + k % 5}\t{1000 + 10 * k}" for u in range(1, 7)
            for k in range(5)]  # fmt: skip
    return {"u.data": "\n".join(data) + "\n", "u.item": "\n".join(map(_item_line, range(10, 18)))}


def _recbole() -> dict[str, str]:
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{10 + (u + k) % 8}\t{1 + k % 5}\t{1000 + k}" for u in range(1, 7)
              for k in range(5)]  # fmt: skip
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{i}\tFilm {i}\t199{i % 10}\tDrama Comedy" for i in range(10, 18)]
    return {"ml-100k.inter": "\n".join(inter) + "\n", "ml-100k.item": "\n".join(items) + "\n"}


def _amazon2014() -> dict[str, str]:
    reviews = [
        json.dumps({"reviewerID": f"u{u}", "asin": f"I{(u + k) % 6}", "overall": 1.0 + k % 5,
                    "unixReviewTime": 1000 + 10 * k})
        for u in range(6) for k in range(5)
    ]  # fmt: skip
    meta = [repr({"asin": f"I{i}", "title": f"Soap {i}", "categories": [["Beauty"]]})
            for i in range(6)]  # fmt: skip
    return {"reviews_Beauty_5.json.gz": "\n".join(reviews), "meta_Beauty.json.gz": "\n".join(meta)}


def _amazon2023() -> dict[str, str]:
    reviews = [
        json.dumps({"user_id": f"u{u}", "parent_asin": f"I{(u + k) % 6}", "asin": "v",
                    "rating": 1.0 + k % 5, "timestamp": 1_000_000 + 1000 * k})
        for u in range(6) for k in range(5)
    ]  # fmt: skip
    meta = [json.dumps({"parent_asin": f"I{i}", "title": f"Balm {i}"}) for i in range(6)]
    return {"Beauty.jsonl": "\n".join(reviews), "meta_Beauty.jsonl": "\n".join(meta)}


def _letter() -> dict[str, str]:
    inter = {str(u): [(u + k) % 6 for k in range(5)] for u in range(6)}
    index = {str(i): [f"<a_{i % 3}>", f"<b_{i}>"] for i in range(6)}
    items = {str(i): {"title": f"Cream {i}", "description": "soft"} for i in range(6)}
    return {
        "X.inter.json": json.dumps(inter),
        "X.index.json": json.dumps(index),
        "X.item.json": json.dumps(items),
    }


SOURCES = {
    # name: (files, data section overrides)
    "ml100k-grouplens": (_grouplens, ["data.source=ml100k"]),
    "ml100k-recbole": (_recbole, ["data.source=ml100k"]),
    "amazon-2014": (_amazon2014, ["data.source=amazon", "data.name=Beauty", "data.kcore=0"]),
    "amazon-2023": (_amazon2023, ["data.source=amazon", "data.name=Beauty", "data.kcore=0"]),
    "letter": (_letter, ["data.source=letter", "data.name=X"]),
}


# --- damage ---------------------------------------------------------------------------------


@st.composite
def damaged(draw, files: dict[str, str]) -> dict[str, bytes]:
    """The files with one or two of them damaged in one of many ways."""
    out = {name: _encode(name, text) for name, text in files.items()}
    for name in draw(st.lists(st.sampled_from(sorted(files)), min_size=1, max_size=2, unique=True)):
        how = draw(st.sampled_from(["field", "field", "json", "bytes", "lines", "gzip", "empty"]))
        text = files[name]
        if how == "field":
            text = _replace_field(draw, text)
        elif how == "json":
            text = _mutate_json(draw, text)
        elif how == "lines":
            lines = text.splitlines()
            keep = draw(st.lists(st.booleans(), min_size=len(lines), max_size=len(lines)))
            extra = draw(st.sampled_from(["", "\t", "x", "1\t2", "{", "1|2|3", "\x00\xff"]))
            text = "\n".join([line for line, k in zip(lines, keep, strict=True) if k] + [extra])
        elif how == "empty":
            out[name] = b""
            continue
        raw = _encode(name, text)
        if how == "bytes":
            cut = draw(st.integers(0, max(0, len(raw) - 1)))
            noise = draw(st.binary(max_size=8))
            raw = raw[:cut] + noise + raw[cut + draw(st.integers(0, 16)) :]
        elif how == "gzip" and name.endswith(".gz"):
            raw = draw(st.sampled_from([raw[: len(raw) // 2], files[name].encode(), b"\x1f\x8b"]))
        elif how == "gzip":
            raw = gzip.compress(raw)  # a gzip file under a plain name
        out[name] = raw
    return out


def _encode(name: str, text: str) -> bytes:
    raw = text.encode("latin-1" if name == "u.item" else "utf-8", errors="replace")
    return gzip.compress(raw) if name.endswith(".gz") else raw


def _replace_field(draw, text: str) -> str:
    lines = text.splitlines() or [""]
    row = draw(st.integers(0, len(lines) - 1))
    sep = "\t" if "\t" in lines[row] else ("|" if "|" in lines[row] else ",")
    fields = lines[row].split(sep)
    col = draw(st.integers(0, len(fields) - 1))
    action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
    if action == "replace":
        fields[col] = draw(st.sampled_from(BAD_SCALARS))
    elif action == "drop":
        del fields[col]
    else:
        fields.insert(col, draw(st.sampled_from(BAD_SCALARS)))
    lines[row] = sep.join(fields)
    return "\n".join(lines) + "\n"


def _mutate_json(draw, text: str) -> str:
    lines = text.splitlines()
    docs = []
    for line in lines:
        try:
            docs.append(json.loads(line))
        except json.JSONDecodeError:
            docs.append(None)
    row = draw(st.integers(0, len(lines) - 1))
    doc = docs[row]
    if not isinstance(doc, dict) or not doc:
        return _replace_field(draw, text)
    key = draw(st.sampled_from(sorted(doc)))
    action = draw(st.sampled_from(["value", "value", "delete", "unknown-id", "nested"]))
    if action == "delete":
        del doc[key]
    elif action == "unknown-id":
        doc[f"{key}-unknown"] = doc.pop(key)
    elif action == "nested" and isinstance(doc[key], dict) and doc[key]:
        inner = draw(st.sampled_from(sorted(doc[key])))
        doc[key][inner] = draw(BAD_JSON_VALUES)
    else:
        doc[key] = draw(BAD_JSON_VALUES)
    lines[row] = json.dumps(doc)
    return "\n".join(lines)


# --- the property ---------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _write(folder: Path, files: dict[str, bytes]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, raw in files.items():
        (folder / name).write_bytes(raw)


def _cfg(source: str, inputs: Path, out: Path):
    return load_config(
        overrides=[*SOURCES[source][1], f"data.path={inputs}", f"run.output_dir={out}"]
    )


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_damaged_input_loads_or_fails_cleanly_and_damages_nothing(source):
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{source}-"))
    valid = {name: _encode(name, text) for name, text in SOURCES[source][0]().items()}
    _write(work / "valid", valid)
    prepare(_cfg(source, work / "valid", work / "out"))  # the data a later failure must keep
    before = _snapshot(work / "out")
    assert before

    @FUZZ
    @given(files=damaged(SOURCES[source][0]()))
    def case(files: dict[str, bytes]) -> None:
        nonlocal before
        _write(work / "bad", files)
        FUZZ_TALLY[source, "cases"] += 1
        try:
            prepare(_cfg(source, work / "bad", work / "out"))
        except GflowgrError as err:
            message = str(err)
            assert message.strip() and "Traceback" not in message
            FUZZ_TALLY[source, "clean errors"] += 1
            assert _snapshot(work / "out") == before, f"a refused input changed data/: {message}"
            return
        FUZZ_TALLY[source, "accepted"] += 1  # a harmless change: put the valid data back
        prepare(_cfg(source, work / "valid", work / "out"))
        before = _snapshot(work / "out")

    try:
        case()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert FUZZ_TALLY[source, "clean errors"] >= 30, dict(FUZZ_TALLY)


# --- the config -----------------------------------------------------------------------------

CONFIG_KEYS = [
    "data.max_history", "data.source", "train.epochs", "train.lr", "train.batch_size",
    "model.preset", "model.hidden_size", "eval.beam_width", "eval.ks", "gfn.lam",
    "gfn.reward.beta", "gfn.sampler.num_augmented", "gfn.sampler.weights_start",
    "gfn.sampler.cf_band_start", "runtime.max_staleness", "runtime.buffer_capacity",
    "runtime.num_rollout_actors", "runtime.rollout_gpus", "runtime.nodes",
    "semantic_ids.codebook_sizes",
    "run.seed", "run.finetune_overrides", "data.sorce", "train.epochz", "nosuchsection.key",
]  # fmt: skip


@st.composite
def bad_config_text(draw) -> str:
    kind = draw(st.sampled_from(["value", "value", "value", "yaml", "shape"]))
    if kind == "yaml":
        return draw(st.sampled_from([
            "data: [", "data:\n  source: ml100k\n   max_history: 3", ": :", "\t- x", "{a: 1",
            "data: !!python/object:os.system ls", "run: &a [*a]",
        ]))  # fmt: skip
    if kind == "shape":
        return draw(st.sampled_from(["- 1\n- 2", "42", "just text", "data: 5", "train: [1, 2]"]))
    key = draw(st.sampled_from(CONFIG_KEYS))
    section, _, name = key.rpartition(".")
    value = draw(BAD_JSON_VALUES)
    tree: dict = {}
    node = tree
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[name] = value
    return json.dumps(tree)  # JSON is YAML


def test_damaged_config_fails_with_one_clear_error_or_loads():
    work = Path(tempfile.mkdtemp(prefix="fuzz-config-"))

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(text=bad_config_text())
    def case(text: str) -> None:
        path = work / "bad.yaml"
        path.write_text(text)
        FUZZ_TALLY["config", "cases"] += 1
        try:
            load_config([path])
        except GflowgrError as err:
            first = str(err).splitlines()[0]
            assert "bad.yaml" in first or "invalid config" in first, str(err)
            FUZZ_TALLY["config", "clean errors"] += 1
            return
        FUZZ_TALLY["config", "accepted"] += 1

    try:
        case()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert FUZZ_TALLY["config", "clean errors"] >= 100, dict(FUZZ_TALLY)


def test_cli_prints_one_error_line_and_no_traceback(tmp_path):
    # The user's view of a refused input, through the real command.
    (tmp_path / "in").mkdir()
    (tmp_path / "in/u.data").write_text("1\t10\tfive\t3\n")
    (tmp_path / "in/u.item").write_text(_item_line(10) + "\n")
    cases = [
        ["prepare", "--set", "data.source=ml100k", "--set", f"data.path={tmp_path / 'in'}"],
        ["prepare", "--set", "data.source=letter", "--set", "data.name=X",
         "--set", f"data.path={tmp_path / 'missing'}"],
        ["prepare", "--config", str(tmp_path / "nope.yaml")],
        ["prepare", "--set", "train.lr=-1"],
    ]  # fmt: skip
    for args in cases:
        done = subprocess.run(
            [sys.executable, "-m", "gflowgr_dist.cli", *args, "--set",
             f"run.output_dir={tmp_path / 'out'}"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and done.stderr.startswith("gflowgr prepare: error:")


def test_fuzz_tally_reaches_the_target():
    """Runs last in this module: at least 200 generated bad inputs, every one handled."""
    if FUZZ_TALLY["config", "cases"] == 0:
        pytest.skip("run with the fuzz tests of this module (they fill the tally)")
    cases = sum(v for (_, what), v in FUZZ_TALLY.items() if what == "cases")
    errors = sum(v for (_, what), v in FUZZ_TALLY.items() if what == "clean errors")
    print("\nfuzz tally:", {f"{s}/{w}": v for (s, w), v in sorted(FUZZ_TALLY.items())})
    assert cases >= 400 and errors >= 200, dict(FUZZ_TALLY)
