"""Beam search and exact scoring against independent oracles, on tiny random backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gflowgr_dist.config import ModelConfig
from gflowgr_dist.decoding import ItemRanker
from gflowgr_dist.decoding.hf_generate import hf_generate_rank
from gflowgr_dist.models.backbones import build_backbone
from gflowgr_dist.semantic_ids.table import SemanticIdTable, add_dedup_level


@pytest.fixture(scope="module", params=["decoder", "t5"])
def ranker(request):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    base = np.stack([rng.integers(0, 4, 50), rng.integers(0, 4, 50), rng.integers(0, 3, 50)], 1)
    codes = add_dedup_level(base)
    table = SemanticIdTable(codes, [4, 4, 3, int(codes[:, -1].max()) + 1], "rkmeans", dedup=True)
    cfg = ModelConfig(arch=request.param, preset="tiny", dropout=0.0)
    model, vocab = build_backbone(cfg, table.codebook_sizes, table.level_names, max_history=8)
    return ItemRanker(model.eval(), vocab, table)


def _histories(seed, n=5, items=50):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, items, rng.integers(1, 8)) for _ in range(n)]


def _teacher_forced_scores(ranker, history):
    """log P(SID) of every item by one plain forward pass per item: no cache, no trie."""
    model = ranker.model
    sid = torch.from_numpy(ranker.sid_tokens)  # [I, L]
    with torch.no_grad():
        if ranker.stepper.encoder_decoder:
            enc = ranker.prompts([history])
            out = model(
                input_ids=enc["input_ids"].expand(len(sid), -1),
                attention_mask=enc["attention_mask"].expand(len(sid), -1),
                labels=sid,
            )
            logits = out.logits  # [I, L, V]
        else:
            prompt = ranker.prompts([history])["input_ids"][0]
            seqs = torch.cat([prompt.expand(len(sid), -1), sid], dim=1)
            logits = model(input_ids=seqs).logits[:, len(prompt) - 1 : -1]
    return logits.log_softmax(-1).gather(2, sid[..., None]).squeeze(-1).sum(1)  # [I]


def test_exact_scores_equal_teacher_forcing(ranker):
    history = _histories(1, n=1)[0]
    exact = ranker.rank([history], k=50, ranker="exact")
    oracle = _teacher_forced_scores(ranker, history).numpy()
    np.testing.assert_allclose(exact.scores[0], oracle[exact.items[0]], rtol=1e-4, atol=1e-4)
    assert exact.items[0].tolist() == np.argsort(-oracle, kind="stable").tolist()


def test_full_width_beam_reproduces_exact(ranker):
    histories = _histories(2)
    exact = ranker.rank(histories, k=20, ranker="exact")
    beam = ranker.rank(histories, k=20, beam_width=ranker.trie.num_sids)
    np.testing.assert_array_equal(beam.items, exact.items)
    np.testing.assert_allclose(beam.scores, exact.scores, atol=1e-5)


def test_beam_matches_transformers_generate(ranker):
    histories = _histories(3)
    ours = ranker.rank(histories, k=8, beam_width=8)
    reference = hf_generate_rank(ranker, histories, 8, beam_width=8)
    np.testing.assert_array_equal(ours.items, reference.items)
    np.testing.assert_allclose(ours.scores, reference.scores, atol=1e-4)


def test_every_returned_id_is_valid_and_items_distinct(ranker):
    ranking = ranker.rank(_histories(4, n=8), k=20, beam_width=20)
    assert (ranking.items >= 0).all()  # 50 items > 20: every slot filled with a real item
    for row in ranking.items:
        assert len(set(row.tolist())) == len(row)
    codes = torch.from_numpy(ranker.table.codes[ranking.items.reshape(-1)])
    assert ranker.trie.contains(codes).all()


def test_exclusion_removes_history_items(ranker):
    histories = _histories(5)
    ranking = ranker.rank(histories, k=10, exclude=histories)
    for row, history in zip(ranking.items, histories, strict=True):
        assert not set(row.tolist()) & set(history.tolist())


def test_exclusion_inside_beam_keeps_every_slot_and_matches_exact(ranker):
    # Histories of up to 40 of 50 items: post-hoc filtering of 12 beams would leave holes.
    rng = np.random.default_rng(6)
    histories = [rng.choice(50, size=n, replace=False) for n in (5, 20, 38)]
    beam = ranker.rank(histories, k=10, beam_width=12, exclude=histories)
    assert (beam.items >= 0).all()
    wide = ranker.rank(histories, k=10, beam_width=ranker.trie.num_sids, exclude=histories)
    exact = ranker.rank(histories, k=10, ranker="exact", exclude=histories)
    np.testing.assert_array_equal(wide.items, exact.items)


def test_shared_id_is_banned_only_when_all_its_items_are():
    torch.manual_seed(0)
    codes = np.array([[0, 1], [0, 1], [1, 0], [1, 1]])  # items 0 and 1 share an ID
    table = SemanticIdTable(codes, [2, 2], "external")
    model, vocab = build_backbone(ModelConfig(preset="tiny"), [2, 2], ["a", "b"], 4)
    ranker = ItemRanker(model.eval(), vocab, table)
    banned = ranker.banned_sids([np.array([0]), np.array([0, 1, 3])])
    assert banned.tolist() == [[False, False, False], [True, False, True]]
    ranking = ranker.rank([np.array([2])], k=4, beam_width=3, exclude=[np.array([0])])
    assert sorted(ranking.items[0].tolist()) == [-1, 1, 2, 3]


def test_shared_ids_expand_to_all_items():
    torch.manual_seed(0)
    codes = np.array([[0, 1], [0, 1], [1, 0], [1, 1]])  # items 0 and 1 share an ID
    table = SemanticIdTable(codes, [2, 2], "external")
    model, vocab = build_backbone(ModelConfig(preset="tiny"), [2, 2], ["a", "b"], 4)
    ranker = ItemRanker(model.eval(), vocab, table)
    ranking = ranker.rank([np.array([2])], k=4, beam_width=3)
    assert sorted(ranking.items[0].tolist()) == [0, 1, 2, 3]
    first = ranking.items[0].tolist().index(0)
    assert ranking.scores[0][first] == ranking.scores[0][ranking.items[0].tolist().index(1)]


def test_sampling_follows_the_trie_restricted_policy(ranker):
    from gflowgr_dist.decoding.sampling import sample_sids

    history = _histories(7, n=1)
    prompts = ranker.prompts(history)
    generator = torch.Generator().manual_seed(0)
    codes = sample_sids(
        ranker.stepper, prompts, ranker.trie, ranker.vocab, num_samples=4000, generator=generator
    )[0]  # [n, L]
    assert ranker.trie.contains(codes).all()

    # Empirical frequencies of the IDs match exp(Σ_l trie-restricted log P_F).
    sids = ranker.trie.sids
    counts = {tuple(c): 0 for c in sids.tolist()}
    for row in codes.tolist():
        counts[tuple(row)] += 1
    probs = _trie_probs(ranker, history[0])
    observed = np.array([counts[tuple(c)] for c in sids.tolist()]) / len(codes)
    assert np.abs(observed - probs).sum() < 0.12  # total variation at n = 4000


def _trie_probs(ranker, history):
    """P(ID) = Π_l softmax over trie-allowed codes, by brute force over every ID."""
    sids = ranker.trie.sids
    vocab = ranker.vocab
    probs = []
    with torch.no_grad():
        for code in sids.tolist():
            tokens = vocab.item_tokens(np.array([code]))[0]
            if ranker.stepper.encoder_decoder:
                labels = torch.tensor([[*tokens.tolist(), vocab.eos_id]])
                logits = ranker.model(**ranker.prompts([history]), labels=labels).logits[0]
                steps = logits[: vocab.num_levels]
            else:
                prompt = ranker.prompts([history])["input_ids"][0].tolist()
                seq = torch.tensor([prompt + tokens.tolist()])
                logits = ranker.model(input_ids=seq).logits[0]
                steps = logits[len(prompt) - 1 : len(prompt) - 1 + vocab.num_levels]
            total, prefix = 0.0, []
            for level, row in enumerate(steps):
                allowed = ranker.trie.allowed_after(torch.tensor([prefix], dtype=torch.long))[0]
                part = row[vocab.level_slice(level)].masked_fill(~allowed, float("-inf"))
                total += float(part.log_softmax(-1)[code[level]])
                prefix.append(code[level])
            probs.append(np.exp(total))
    return np.array(probs)


def test_trie_normalised_beam_matches_trie_normalised_exact(ranker):
    histories = _histories(8)
    exact = ranker.rank(histories, k=20, ranker="exact", trie_normalised=True)
    beam = ranker.rank(histories, k=20, beam_width=ranker.trie.num_sids, trie_normalised=True)
    np.testing.assert_array_equal(beam.items, exact.items)
    np.testing.assert_allclose(beam.scores, exact.scores, atol=1e-5)
    # Restricted to the trie, the IDs' probabilities sum to one.
    full = ranker.rank(histories[:1], k=50, ranker="exact", trie_normalised=True)
    assert np.exp(full.scores[0]).sum() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("ranker", ["decoder"], indirect=True)  # windows are decoder rows
def test_sampling_in_windows_equals_sampling_from_each_prompt(ranker):
    # One forward pass per training window serves every target's prompt (its prefix), and the
    # samples grow as branches of the window's cache: the draws under the same generator equal
    # per-prompt sampling, greedy and at temperature 1.
    from gflowgr_dist.decoding.sampling import sample_sids, sample_sids_in_windows
    from gflowgr_dist.gfn.scoring import window_targets
    from gflowgr_dist.gfn.trajectories import WindowPrefixes
    from gflowgr_dist.models.prompts import decoder_prompts, training_windows

    rng = np.random.default_rng(3)
    sequences = [rng.integers(0, 50, n) for n in (9, 4, 12)]
    windows = training_windows(sequences, [0, 1, 2], max_history=8, stride=3)
    positions = np.stack(window_targets(windows), axis=1)
    rows = np.array([0, 2, 3, len(positions) - 1])  # some examples, several windows
    histories = [windows[w].items[:c] for w, c in positions[rows]]
    prompts = decoder_prompts(histories, ranker.sid_tokens, ranker.vocab)
    packed = WindowPrefixes(windows, positions).prompts(rows, ranker.sid_tokens, ranker.vocab)

    args = (ranker.trie, ranker.vocab)
    for temperature in (0.0, 1.0):
        want = sample_sids(
            ranker.stepper,
            prompts,
            *args,
            num_samples=50,
            temperature=temperature,
            generator=torch.Generator().manual_seed(1),
        )
        got = sample_sids_in_windows(
            ranker.stepper,
            *packed,
            *args,
            num_samples=50,
            temperature=temperature,
            generator=torch.Generator().manual_seed(1),
        )
        assert torch.equal(got, want), temperature
