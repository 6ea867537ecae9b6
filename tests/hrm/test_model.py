"""HRM structure: official parameter counts, keys, the one-step-gradient schedule, Q target."""
from __future__ import annotations

import torch

from hrm.config import HRMConfig
from model_core.registry import build_model


def _cfg(vocab=11, seq=81, **kw) -> HRMConfig:
    cfg = HRMConfig(**kw)
    cfg.derive_from_data(vocab_size=vocab, seq_len=seq, num_puzzle_identifiers=1, batch_size=4)
    return cfg


def test_parameter_counts_match_official():
    """27,275,266 is the num_params W&B value of the official HRM Sudoku run (HRM issue #12)."""
    assert sum(p.numel() for p in build_model(_cfg()).parameters()) == 27_275_266
    assert sum(p.numel() for p in build_model(_cfg(vocab=6, seq=900)).parameters()) == 27_270_146


def test_schedule_llhl_then_lh_with_grad():
    core = build_model(_cfg(hidden_size=32, num_heads=2, H_layers=1, L_layers=1, puzzle_emb_ndim=32)).model.inner
    assert core.sub_updates() == ["L", "L", "H", "L", "L", "H"]
    assert core.grad_updates == 2
    assert core.level("H") is core.H_level and core.level("L") is core.L_level
    assert core.puzzle_emb_len == 1


def test_training_forward_produces_bootstrapped_q_target():
    model = build_model(_cfg(hidden_size=32, num_heads=2, H_layers=1, L_layers=1, forward_dtype="float32")).train()
    batch = {"inputs": torch.randint(1, 11, (4, 81), dtype=torch.int32), "labels": torch.randint(2, 11, (4, 81), dtype=torch.int32),
             "puzzle_identifiers": torch.zeros(4, dtype=torch.int32)}
    carry = model.initial_carry(batch)
    carry, loss, metrics, outputs, _ = model(carry, batch, return_keys=("target_q_continue",))
    assert "q_continue_loss" in metrics
    target = outputs["target_q_continue"]
    assert target.shape == (4,) and torch.all((target > 0) & (target < 1))
    loss.backward()
