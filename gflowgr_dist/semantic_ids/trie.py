"""A prefix trie over semantic IDs, stored as tensors so that a whole batch moves at once.

Decoding under the trie asks, for every row of a batch (users × beams), which codes may come
next after the prefix generated so far. A Python dict of prefixes answers one row at a time,
which transformers' maintainers call a performance killer at beam width 20. Here the trie is one
dense child table per level:

    children[l][node, code] = id of the depth-(l+1) node reached, or -1 if no item has it

with node ids per depth. A batch query is then one gather: `children[l][nodes] >= 0` is the
[B, K_l] mask of allowed codes, and `children[l][nodes, codes]` advances all rows together. The
only Python loop is over levels (3-5).

Memory is sum_l nodes_l × K_l int32: 12 MB for LETTER's Beauty index (4 × 256 codes, 12k items).
Known limit: with codebooks far above a few thousand codes per level or tens of millions of
prefixes, a CSR layout (sorted child lists + searchsorted) would be needed instead; nothing in
this project's data comes near that.
"""

from __future__ import annotations

import numpy as np
import torch


class SidTrie:
    """Dense per-level child tables over a set of semantic IDs.

    Attributes:
        codebook_sizes: codes per level, [L].
        children: per level l, [N_l, K_l] int32 (N_0 = 1, the root).
        leaf_sid: for each depth-L node, the row of `sids` it ends, [N_L] int64.
        sids: the distinct IDs the trie holds, [S, L] int64, sorted.
    """

    def __init__(self, codes: np.ndarray | torch.Tensor, codebook_sizes: list[int]) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        sids = np.unique(codes, axis=0)
        self.codebook_sizes = list(codebook_sizes)
        self.num_levels = sids.shape[1]
        self.sids = torch.from_numpy(sids)
        self.children: list[torch.Tensor] = []

        parent = np.zeros(len(sids), dtype=np.int64)  # every SID starts at the root
        num_parents = 1
        for level in range(self.num_levels):
            # Number the distinct prefixes of length level+1; link each to its parent.
            _, node, counts = np.unique(
                sids[:, : level + 1], axis=0, return_inverse=True, return_counts=True
            )
            node = node.reshape(-1)
            table = np.full((num_parents, self.codebook_sizes[level]), -1, dtype=np.int32)
            table[parent, sids[:, level]] = node
            self.children.append(torch.from_numpy(table))
            parent, num_parents = node, len(counts)

        leaf = np.empty(num_parents, dtype=np.int64)
        leaf[parent] = np.arange(len(sids))
        self.leaf_sid = torch.from_numpy(leaf)

    @property
    def num_sids(self) -> int:
        return int(self.sids.shape[0])

    def root(self, batch: int) -> torch.Tensor:
        """Node ids of `batch` empty prefixes, [B] int64."""
        return torch.zeros(batch, dtype=torch.int64)

    def allowed(self, nodes: torch.Tensor, level: int) -> torch.Tensor:
        """Mask of codes allowed after each prefix node at depth `level`, [B] -> [B, K_level].

        Rows with node -1 (a dead prefix) allow nothing.
        """
        table = self.children[level]
        mask = table[nodes.clamp(min=0)] >= 0
        return mask & (nodes >= 0)[:, None]

    def step(self, nodes: torch.Tensor, level: int, codes: torch.Tensor) -> torch.Tensor:
        """Advances every row by one code, [B] -> [B]; -1 where the code is not allowed."""
        table = self.children[level]
        in_range = (codes >= 0) & (codes < table.shape[1]) & (nodes >= 0)
        nxt = table[nodes.clamp(min=0), codes.clamp(0, table.shape[1] - 1)].long()
        return torch.where(in_range, nxt, torch.full_like(nxt, -1))

    def walk(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Node of each prefix, [B, l] -> [B] (-1 for prefixes no ID starts with)."""
        nodes = self.root(prefixes.shape[0])
        for level in range(prefixes.shape[1]):
            nodes = self.step(nodes, level, prefixes[:, level])
        return nodes

    def allowed_after(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Allowed next codes for a batch of prefixes of equal length l, [B, l] -> [B, K_l]."""
        return self.allowed(self.walk(prefixes), prefixes.shape[1])

    def contains(self, codes: torch.Tensor) -> torch.Tensor:
        """Whether each full ID is in the trie, [B, L] -> [B] bool."""
        return self.walk(codes) >= 0

    def sid_index(self, codes: torch.Tensor) -> torch.Tensor:
        """Row of `sids` for each full ID, [B, L] -> [B] (-1 when absent)."""
        nodes = self.walk(codes)
        index = self.leaf_sid[nodes.clamp(min=0)]
        return torch.where(nodes >= 0, index, torch.full_like(index, -1))

    def alive_nodes(self, admissible: torch.Tensor) -> list[torch.Tensor]:
        """Per row, which nodes still have an admissible ID below them.

        admissible: [B, S] bool over `sids`. Returns, for depths 1..L, [B, N_depth] bool
        (index l holds depth l+1, the nodes that the codes of level l lead to).
        """
        alive = admissible[:, self.leaf_sid]  # [B, N_L]
        out = [alive]
        for level in range(self.num_levels - 1, 0, -1):
            parent, _ = self.edges(level)  # parent (depth level) of each depth-(level+1) node
            num_parents = self.children[level].shape[0]
            count = torch.zeros(alive.shape[0], num_parents, dtype=torch.int32)
            count.index_add_(1, parent, alive.int())
            alive = count > 0
            out.append(alive)
        return out[::-1]

    def edges(self, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(parent node, code) of every depth-(level+1) node, in node-id order, each [N_{l+1}]."""
        table = self.children[level]
        parent, code = torch.nonzero(table >= 0, as_tuple=True)
        order = torch.argsort(table[parent, code].long())
        return parent[order], code[order]

    def branching(self) -> list[int]:
        """Largest number of children of any node, per level."""
        return [int((table >= 0).sum(dim=1).max()) for table in self.children]
