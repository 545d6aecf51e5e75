"""The tensor trie against a brute-force set of prefixes."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gflowgr_dist.semantic_ids.trie import SidTrie


def _brute_allowed(sids, prefix, size):
    allowed = np.zeros(size, dtype=bool)
    for sid in sids:
        if tuple(sid[: len(prefix)]) == tuple(prefix):
            allowed[sid[len(prefix)]] = True
    return allowed


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 5), min_size=1, max_size=4),
    n=st.integers(1, 40),
    seed=st.integers(0, 1000),
)
def test_allowed_matches_brute_force(sizes, n, seed):
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, s, n) for s in sizes], axis=1)
    trie = SidTrie(codes, sizes)
    sids = {tuple(r) for r in codes.tolist()}
    for level, size in enumerate(sizes):
        # Every prefix of this length: those of real IDs plus random (often dead) ones.
        real = codes[:, :level]
        noise = np.stack([rng.integers(0, s, 16) for s in sizes[:level]] or [np.zeros(16)], 1)
        noise = noise[:, :level].astype(np.int64)
        prefixes = np.concatenate([real, noise])
        got = trie.allowed_after(torch.from_numpy(prefixes)).numpy()
        want = np.stack([_brute_allowed(sids, p, size) for p in prefixes.tolist()])
        np.testing.assert_array_equal(got, want)
    contains = trie.contains(torch.from_numpy(codes)).numpy()
    assert contains.all()
    index = trie.sid_index(torch.from_numpy(codes))
    np.testing.assert_array_equal(trie.sids[index].numpy(), codes)


def test_step_rejects_invalid_and_dead_rows():
    trie = SidTrie(np.array([[0, 1], [2, 0]]), [3, 2])
    nodes = trie.step(trie.root(3), 0, torch.tensor([0, 1, 7]))
    assert nodes.tolist()[1:] == [-1, -1]  # code 1 unused at level 0; 7 out of range
    mask = trie.allowed(nodes, 1)
    assert mask.tolist() == [[False, True], [False, False], [False, False]]
    assert not trie.contains(torch.tensor([[0, 0], [2, 1]])).any()
    assert trie.sid_index(torch.tensor([[2, 0], [0, 0]])).tolist() == [1, -1]
    assert trie.branching() == [2, 1]


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 4), min_size=1, max_size=4),
    n=st.integers(1, 30),
    seed=st.integers(0, 1000),
)
def test_alive_nodes_are_the_prefixes_of_admissible_ids(sizes, n, seed):
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, s, n) for s in sizes], axis=1)
    trie = SidTrie(codes, sizes)
    admissible = torch.from_numpy(rng.random((3, trie.num_sids)) < 0.4)  # [B, S]
    alive = trie.alive_nodes(admissible)
    sids = trie.sids.numpy()
    for depth in range(1, len(sizes) + 1):
        # A depth-d node is alive iff some admissible ID starts with its prefix.
        prefixes = np.unique(sids[:, :depth], axis=0)
        nodes = trie.walk(torch.from_numpy(prefixes)).numpy()
        for row in range(3):
            ok = {tuple(s[:depth]) for s in sids[admissible[row].numpy()].tolist()}
            want = [tuple(p) in ok for p in prefixes.tolist()]
            assert alive[depth - 1][row, nodes].tolist() == want
