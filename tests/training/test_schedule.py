"""The warmup + cosine learning-rate rule at hand-computed points."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.schedule import apply_lr_schedule, cosine_schedule_with_warmup_lr, set_lr


@pytest.mark.parametrize(
    "step, expected",
    [
        (1, 1e-4 / 2000),  # the first update (step is 1-indexed) is not at lr 0
        (1000, 5e-5),
        (1999, 1e-4 * 1999 / 2000),
        (2000, 1e-4),  # progress 0: cos 0 = 1
        (65100, 1e-4),  # README runs: min_ratio 1.0 is constant after warmup
    ],
)
def test_official_recipe_warmup_then_constant(step, expected):
    lr = cosine_schedule_with_warmup_lr(1e-4, step, warmup_steps=2000, total_steps=65104)
    assert lr == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "step, factor",
    [
        (5, 0.5),  # warmup: 5 / 10
        (10, 1.0),  # progress 0
        (35, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),  # progress 1/4: 0.868198
        (60, 0.55),  # progress 1/2: 0.1 + 0.9 * 0.5
        (110, 0.1),  # progress 1: the floor r
        (160, 0.55),  # past total the half cosine keeps going (never used by the loop)
    ],
)
def test_cosine_decay_to_floor(step, factor):
    """W = 10, total = 110, r = 0.1: progress = (step - 10) / 100."""
    lr = cosine_schedule_with_warmup_lr(2.0, step, 10, 110, min_ratio=0.1)
    assert lr == pytest.approx(2.0 * factor, rel=1e-12)


def test_num_cycles_and_degenerate_lengths():
    # num_cycles 1: a full cosine, back to base at total; max(0, .) is inactive with r = 0.
    full = dict(min_ratio=0.0, num_cycles=1.0)
    assert cosine_schedule_with_warmup_lr(1.0, 60, 10, 110, **full) == pytest.approx(0.0, abs=1e-15)
    assert cosine_schedule_with_warmup_lr(1.0, 110, 10, 110, **full) == pytest.approx(1.0)
    # No warmup: step 1 is already on the cosine; total <= warmup divides by max(1, .).
    assert cosine_schedule_with_warmup_lr(1.0, 1, 0, 2, 0.0) == pytest.approx(0.5)
    assert cosine_schedule_with_warmup_lr(1.0, 6, 5, 5, 0.0) == pytest.approx(0.0, abs=1e-15)


def test_apply_lr_schedule_sets_every_group():
    a, b = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 5.0}], lr=0.0)
    lr = apply_lr_schedule(opt, 3, base_lr=0.3, warmup_steps=6, total_steps=100)
    assert lr == pytest.approx(0.15)
    assert [g["lr"] for g in opt.param_groups] == [lr, lr]
    set_lr(opt, 0.0)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]
