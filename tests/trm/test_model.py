"""TRM structure: official parameter counts, state-dict keys and shapes, the sub-update schedule."""
from __future__ import annotations

import torch

from model_core.registry import build_model
from trm.config import TRMConfig


def _sudoku(**kw) -> TRMConfig:
    cfg = TRMConfig(**kw)
    cfg.derive_from_data(vocab_size=11, seq_len=81, num_puzzle_identifiers=1, batch_size=4)
    return cfg


def test_parameter_counts_match_official_recipes():
    """Counts published in the official runs (official.md §1.5); num_params excludes buffers."""
    mlp = build_model(_sudoku(mlp_t=True, pos_encodings="none"))
    att = build_model(_sudoku())
    maze = TRMConfig(L_cycles=4)
    maze.derive_from_data(vocab_size=6, seq_len=900, num_puzzle_identifiers=1, batch_size=4)
    assert sum(p.numel() for p in mlp.parameters()) == 5_028_866
    assert sum(p.numel() for p in att.parameters()) == 6_828_034
    assert sum(p.numel() for p in build_model(maze).parameters()) == 6_822_914


def test_state_dict_keys_and_shapes_match_official_mlp_t():
    sd = build_model(_sudoku(mlp_t=True, pos_encodings="none")).state_dict()
    assert sd["model.inner.H_init"].dtype == torch.bfloat16 and sd["model.inner.H_init"].shape == (512,)
    assert sd["model.inner.puzzle_emb.weights"].shape == (1, 512)
    assert sd["model.inner.L_level.layers.0.mlp_t.gate_up_proj.weight"].shape == (1024, 97)
    assert sd["model.inner.L_level.layers.1.mlp_t.down_proj.weight"].shape == (97, 512)
    assert sd["model.inner.L_level.layers.0.mlp.gate_up_proj.weight"].shape == (3072, 512)
    assert sd["model.inner.L_level.layers.0.mlp.down_proj.weight"].shape == (512, 1536)
    assert sd["model.inner.q_head.bias"].tolist() == [-5.0, -5.0]
    # non-persistent buffers stay out of the file
    assert not any("local_weights" in k or "local_ids" in k or "cos_cached" in k for k in sd)
    assert len(sd) == 7 + 2 * 4


def test_sub_update_schedule_is_21_per_segment_with_last_cycle_differentiable():
    core = build_model(_sudoku(hidden_size=32, num_heads=2)).model.inner
    schedule = core.sub_updates()
    assert len(schedule) == 21 and schedule.count("H") == 3 and schedule[-1] == "H"
    assert core.grad_updates == 7


def test_gradient_reaches_weights_only_through_last_cycle():
    cfg = _sudoku(hidden_size=32, num_heads=2, H_cycles=2, L_cycles=2, forward_dtype="float32")
    model = build_model(cfg).train()
    batch = {"inputs": torch.randint(1, 11, (4, 81), dtype=torch.int32), "labels": torch.randint(2, 11, (4, 81), dtype=torch.int32),
             "puzzle_identifiers": torch.zeros(4, dtype=torch.int32)}
    carry = model.initial_carry(batch)
    carry, loss, metrics, _, _ = model(carry, batch)
    loss.backward()
    assert carry.inner.z_H.grad_fn is None and not carry.inner.z_H.requires_grad
    assert model.model.inner.L_level.layers[0].mlp.gate_up_proj.weight.grad is not None
    assert model.model.inner.puzzle_emb.local_weights.grad is not None
    assert int(metrics["count"]) == 0  # nothing halts on the first segment of a fresh model


def test_no_puzzle_embedding_means_no_prefix():
    """Official TRM reserves 16 prefix positions even without a puzzle embedding and crashes; here P = 0."""
    core = build_model(_sudoku(hidden_size=32, num_heads=2, puzzle_emb_ndim=0, mlp_t=True, pos_encodings="none")).model.inner
    assert core.puzzle_emb_len == 0
    x = torch.randint(1, 11, (2, 81))
    out = core(core.initial_carry(2), {"inputs": x, "puzzle_identifiers": torch.zeros(2, dtype=torch.int32)})[1]
    assert out.logits.shape == (2, 81, 11)
