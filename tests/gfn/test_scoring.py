"""The packed trajectory scorer against one plain forward pass per (history, item) pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gflowgr_dist.config import ModelConfig
from gflowgr_dist.gfn.scoring import score_decoder_windows, score_seq2seq, window_targets
from gflowgr_dist.models.backbones import build_backbone
from gflowgr_dist.models.prompts import collate_decoder_windows, training_windows
from gflowgr_dist.semantic_ids.table import SemanticIdTable, add_dedup_level
from gflowgr_dist.semantic_ids.trie import SidTrie


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    base = np.stack([rng.integers(0, 4, 40), rng.integers(0, 3, 40)], 1)
    codes = add_dedup_level(base)
    table = SemanticIdTable(codes, [4, 3, int(codes[:, -1].max()) + 1], "rkmeans", dedup=True)
    trie = SidTrie(codes, table.codebook_sizes)
    return codes, table, trie, rng


def _oracle_log_pf(logits_per_level, code, trie, vocab):
    """Plain trie-restricted log-softmax of one ID, level by level."""
    out, prefix = [], []
    for level, logits in enumerate(logits_per_level):
        allowed = trie.allowed_after(torch.tensor([prefix], dtype=torch.long))[0]
        part = logits[vocab.level_slice(level)].masked_fill(~allowed, float("-inf"))
        out.append(float(part.log_softmax(-1)[code[level]]))
        prefix.append(int(code[level]))
    return np.array(out)


def _tiny_decoder(table):
    """A tiny decoder in eval mode (no dropout) over the table's codes, and its vocabulary."""
    model, vocab = build_backbone(
        ModelConfig(preset="tiny", dropout=0.0),
        table.codebook_sizes,
        table.level_names,
        max_history=6,
    )
    return model.eval(), vocab


def test_packed_decoder_scores_equal_plain_forward_passes(setup):
    codes, table, trie, rng = setup
    model, vocab = _tiny_decoder(table)
    sid_tokens = vocab.item_tokens(codes)
    sequences = [rng.integers(0, 40, n) for n in (9, 4, 12)]
    windows = training_windows(sequences, [0, 1, 2], max_history=6, stride=3)
    rows, cols = window_targets(windows)
    augmented = rng.integers(0, 40, (len(rows), 3))
    with torch.no_grad():
        scored = score_decoder_windows(model, windows, augmented, sid_tokens, vocab, trie, codes)
        # SFT loss equals the plain windowed loss.
        plain = model(**collate_decoder_windows(windows, sid_tokens, vocab)).loss
        torch.testing.assert_close(scored.loss_sft, plain, atol=1e-5, rtol=1e-5)
        for e, (r, c) in enumerate(zip(rows, cols, strict=True)):
            history = windows[r].items[:c]
            for t, item in enumerate([windows[r].items[c], *augmented[e]]):
                seq = [vocab.bos_id, *sid_tokens[history].reshape(-1), *sid_tokens[item]]
                logits = model(input_ids=torch.tensor([seq])).logits[0]
                start = 1 + len(history) * vocab.num_levels
                steps = [logits[start - 1 + lvl] for lvl in range(vocab.num_levels)]
                want = _oracle_log_pf(steps, codes[item], trie, vocab)
                np.testing.assert_allclose(scored.log_pf[e, t].numpy(), want, atol=1e-4)
    assert scored.hidden.shape[:3] == (len(rows), 4, vocab.num_levels)


def test_packed_scores_carry_gradients(setup):
    codes, table, trie, rng = setup
    model, vocab = build_backbone(
        ModelConfig(preset="tiny"), table.codebook_sizes, table.level_names, max_history=6
    )
    windows = training_windows([rng.integers(0, 40, 8)], [0], max_history=6, stride=2)
    augmented = rng.integers(0, 40, (len(window_targets(windows)[0]), 2))
    scored = score_decoder_windows(
        model, windows, augmented, vocab.item_tokens(codes), vocab, trie, codes
    )
    (scored.log_pf.sum() + scored.loss_sft).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_seq2seq_scores_equal_plain_forward_passes(setup):
    codes, table, trie, rng = setup
    model, vocab = build_backbone(
        ModelConfig(arch="t5", preset="tiny", dropout=0.0),
        table.codebook_sizes,
        table.level_names,
        max_history=6,
    )
    model.eval()
    sid_tokens = vocab.item_tokens(codes)
    histories = [rng.integers(0, 40, n) for n in (3, 6)]
    items = rng.integers(0, 40, (2, 3))
    with torch.no_grad():
        scored = score_seq2seq(model, histories, items, sid_tokens, vocab, trie, codes)
        from gflowgr_dist.models.prompts import collate_seq2seq

        plain = model(**collate_seq2seq(histories, items[:, 0], sid_tokens, vocab)).loss
        torch.testing.assert_close(scored.loss_sft, plain, atol=1e-5, rtol=1e-5)
        for e, history in enumerate(histories):
            from gflowgr_dist.models.prompts import collate_seq2seq as one

            for t, item in enumerate(items[e]):
                batch = one([history], np.array([item]), sid_tokens, vocab)
                logits = model(**batch).logits[0]
                want = _oracle_log_pf(list(logits[: vocab.num_levels]), codes[item], trie, vocab)
                np.testing.assert_allclose(scored.log_pf[e, t].numpy(), want, atol=1e-4)


def test_a_subset_of_targets_scores_as_the_same_rows_of_the_full_pass(setup):
    codes, table, trie, rng = setup
    model, vocab = _tiny_decoder(table)
    sid_tokens = vocab.item_tokens(codes)
    windows = training_windows(
        [rng.integers(0, 40, n) for n in (9, 12)], [0, 1], max_history=6, stride=3
    )
    rows, cols = window_targets(windows)
    augmented = rng.integers(0, 40, (len(rows), 2))
    keep = np.array([e for e in range(len(rows)) if e % 2 == 0])  # every other target
    positions = np.stack([rows[keep], cols[keep]], axis=1)
    with torch.no_grad():
        full = score_decoder_windows(model, windows, augmented, sid_tokens, vocab, trie, codes)
        part = score_decoder_windows(
            model, windows, augmented[keep], sid_tokens, vocab, trie, codes, positions=positions
        )
    # The SFT loss still covers every target; the kept examples score as in the full pass.
    torch.testing.assert_close(part.loss_sft, full.loss_sft, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part.log_pf, full.log_pf[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part.context, full.context[keep], atol=1e-5, rtol=1e-5)
