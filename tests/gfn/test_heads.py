"""Tests of the log Z and flow heads and of the context pooling they read."""

from __future__ import annotations

import math

import pytest
import torch

from gflowgr_dist.gfn.heads import FlowHead, LogZHead, pool_context

torch.set_num_threads(1)


def test_log_z_head_starts_at_init_value() -> None:
    torch.manual_seed(0)
    head = LogZHead(hidden=8, init_log_z=math.log(2.5))
    log_z = head(torch.randn(4, 8))  # [B]
    assert log_z.shape == (4,)
    torch.testing.assert_close(log_z, torch.full((4,), math.log(2.5)))


def test_log_z_head_learns_per_context() -> None:
    torch.manual_seed(0)
    head = LogZHead(hidden=32)
    context = torch.randn(2, 32)
    optimizer = torch.optim.Adam(head.parameter_groups(base_lr=1e-3))
    for _ in range(200):
        optimizer.zero_grad()
        (head(context) - torch.tensor([1.0, -1.0])).pow(2).sum().backward()
        optimizer.step()
    log_z = head(context)
    # Targets differ per context, so a per-U log Z can fit both; a scalar could not.
    torch.testing.assert_close(log_z, torch.tensor([1.0, -1.0]), atol=0.05, rtol=0)


def test_log_z_param_groups_use_ten_times_base_lr() -> None:
    head = LogZHead(hidden=8)
    (group,) = head.parameter_groups(base_lr=1e-4)
    assert group["lr"] == pytest.approx(1e-3)
    assert group["weight_decay"] == 0.0
    assert {id(p) for p in group["params"]} == {id(p) for p in head.parameters()}
    (custom,) = head.parameter_groups(base_lr=1e-4, lr_multiplier=3.0)
    assert custom["lr"] == pytest.approx(3e-4)
    optimizer = torch.optim.AdamW(head.parameter_groups(base_lr=1e-4))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_log_z_head_rejects_tiny_hidden() -> None:
    with pytest.raises(ValueError, match="hidden=1"):
        LogZHead(hidden=1)


def test_flow_head_shapes() -> None:
    head = FlowHead(hidden=6)
    log_flows = head(torch.randn(3, 4, 6))  # [B, L, H] → [B, L]
    assert log_flows.shape == (3, 4)


def test_pool_context_ignores_padding() -> None:
    hidden = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0], [math.nan, math.inf]],
            [[5.0, 6.0], [1e6, -1e6], [1e6, 1e6]],
        ]
    )  # [B=2, T=3, H=2]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # Row 0: mean of (1, 2), (3, 4) = (2, 3). Row 1: only (5, 6).
    torch.testing.assert_close(pool_context(hidden, mask), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))


def test_pool_context_empty_row_is_zero_and_shape_checked() -> None:
    pooled = pool_context(torch.ones(1, 2, 3), torch.zeros(1, 2))
    torch.testing.assert_close(pooled, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="attention_mask"):
        pool_context(torch.ones(1, 2, 3), torch.zeros(1, 3))
