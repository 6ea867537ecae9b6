"""Layer-level facts from the official implementation (official.md §1.1, §2)."""
from __future__ import annotations

import math

import pytest
import torch

from model_core.init import trunc_normal_init_
from model_core.layers import apply_rotary_pos_emb, rms_norm, swiglu_intermediate_size
from model_core.losses import softmax_cross_entropy, stablemax_cross_entropy


def test_truncated_normal_realises_requested_std_within_bounds():
    """JAX-style truncation rescales so the realised std equals `std` (torch's would give ~0.88)."""
    torch.manual_seed(0)
    t = trunc_normal_init_(torch.empty(400_000), std=0.5)
    assert abs(t.std().item() - 0.5) < 3e-3
    assert t.abs().max().item() <= 2 * 0.5 * 1.1369 + 1e-4
    assert torch.count_nonzero(trunc_normal_init_(torch.empty(10), std=0.0)) == 0


@pytest.mark.parametrize("hidden,expansion,expected", [(512, 4, 1536), (97, 4, 512), (64, 4, 256)])
def test_swiglu_intermediate_size_rounds_to_256(hidden, expansion, expected):
    assert swiglu_intermediate_size(hidden, expansion) == expected


def test_stablemax_matches_published_value():
    """logits (-2, 0, 3), label 2: -log(4 / (1/3 + 1 + 4)) = 0.28768 (official.md §2)."""
    ce = stablemax_cross_entropy(torch.tensor([[[-2.0, 0.0, 3.0]]]), torch.tensor([[2]]))
    assert ce.dtype == torch.float64
    assert ce.item() == pytest.approx(-math.log(4 / (1 / 3 + 1 + 4)), abs=1e-12)


def test_cross_entropies_ignore_masked_positions():
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, -100, 2], [-100, -100, 4]])
    for fn in (stablemax_cross_entropy, softmax_cross_entropy):
        ce = fn(logits, labels)
        assert ce.shape == (2, 3) and ce[0, 1] == 0 and ce[1, 0] == 0 and ce[0, 0] > 0
    ref = torch.nn.functional.cross_entropy(logits[0, 0:1], labels[0, 0:1])
    assert softmax_cross_entropy(logits, labels)[0, 0].item() == pytest.approx(ref.item(), rel=1e-6)


def test_cross_entropies_take_the_sliced_logits_the_heads_produce():
    """The heads score logits[:, prefix:] (non-contiguous): both losses equal those of a copy."""
    logits = torch.randn(2, 4 + 3, 5)[:, 4:]
    labels = torch.tensor([[1, -100, 2], [0, 3, 4]])
    assert not logits.is_contiguous()
    for fn in (stablemax_cross_entropy, softmax_cross_entropy):
        assert torch.equal(fn(logits, labels), fn(logits.contiguous(), labels))


def test_rms_norm_is_weightless_and_unit_rms():
    x = torch.randn(3, 7, 16) * 5
    y = rms_norm(x, 1e-5)
    assert torch.allclose(y.square().mean(-1), torch.ones(3, 7), atol=1e-4)


def test_rope_half_split_rotation_preserves_norm_and_rotates_pairs():
    """Half-split convention pairs dimension i with i + hd/2 (not interleaved neighbours)."""
    hd = 4
    q = torch.zeros(1, 1, 1, hd)
    q[..., 0] = 1.0
    angle = 0.3
    cos = torch.tensor([[math.cos(angle), math.cos(angle * 0.01), math.cos(angle), math.cos(angle * 0.01)]])
    sin = torch.tensor([[math.sin(angle), math.sin(angle * 0.01), math.sin(angle), math.sin(angle * 0.01)]])
    q2, _ = apply_rotary_pos_emb(q, q.clone(), cos, sin)
    assert q2[0, 0, 0, 0].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert q2[0, 0, 0, 2].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert q2[0, 0, 0, 1].item() == 0 and q2[0, 0, 0, 3].item() == 0
