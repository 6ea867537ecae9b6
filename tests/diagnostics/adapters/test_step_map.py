"""The step-map adapter: schedule, plain rollout against core.forward, tangent pushes, the
segment-by-segment FTLE driver against diagnostics.estimators.lyapunov.

Official fixtures: tiny random-weight official models (hidden 64, seq 81; TRM 8 and HRM 8
sub-updates per segment, halt_max_steps 4) with the official predictions in expected.npz.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diagnostics.adapters.step_map import SegmentReadouts, SubUpdateMap, join_carry, keep_freed_memory, rollout, segment_ftle, split_state
from diagnostics.estimators.lyapunov import lyapunov_log_r
from model_core.checkpoint import load_checkpoint
from model_core.layers import math_sdpa
from runtime.errors import ConfigError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "official"
MODELS = ("trm_mlp", "trm_att", "hrm")


def fixture_map(name: str, dtype: str = "float32", n: int = 4) -> tuple[SubUpdateMap, dict[str, torch.Tensor]]:
    """The official fixture model in `dtype` and its first n test examples."""
    loaded = load_checkpoint(FIXTURES / name / "run", seq_len=81, overrides={"forward_dtype": dtype})
    core = loaded.model.model.inner.requires_grad_(False)
    data = FIXTURES / name / "data" / "test"
    batch = {
        "inputs": torch.from_numpy(np.load(data / "all__inputs.npy")[:n].astype(np.int32)),
        "labels": torch.from_numpy(np.load(data / "all__labels.npy")[:n].astype(np.int64)),
        "puzzle_identifiers": torch.from_numpy(np.load(data / "all__puzzle_identifiers.npy")[:n].astype(np.int32)),
    }
    batch["labels"][batch["labels"] == 0] = -100  # ignore_label_id 0
    return SubUpdateMap(core, batch), batch


@pytest.mark.parametrize("name", MODELS)
def test_rollout_readouts_equal_core_forward_exactly(name):
    """Test hypothesis: the adapter runs the same operations as core.forward, so predictions and
    q logits are bit-identical segment by segment (tolerance 0), and the last segment reproduces
    the official implementation's predictions (identical preds, q_halt within 1e-4, as the
    fixture README specifies)."""
    smap, batch = fixture_map(name, n=8)
    core = smap.core
    segments = core.config.halt_max_steps
    _, readouts = rollout(smap, segments)
    carry = core.initial_carry(8)
    with torch.no_grad():
        for s in range(segments):
            carry, out = core(carry, batch)
            assert torch.equal(readouts.preds[:, s], out.logits.argmax(-1))
            assert torch.equal(readouts.q_halt[:, s], out.q_halt_logits)
            assert torch.equal(readouts.q_continue[:, s], out.q_continue_logits)
    expected = np.load(FIXTURES / name / "expected.npz")
    assert np.array_equal(readouts.preds[:, -1].numpy(), expected["preds"][:8])
    np.testing.assert_allclose(readouts.q_halt.numpy(), expected["q_halt_logits"][:8], atol=1e-4)


def test_schedule_walk_and_state_layout():
    smap, _ = fixture_map("hrm")
    assert smap.schedule == ["L", "L", "L", "H", "L", "L", "L", "H"] and smap.sub_updates_per_segment == 8
    z = smap.initial_state()
    assert z.shape == (4, 2, 82, 64)
    assert torch.equal(z[:, 0], smap.core.H_init.expand(4, 82, 64).to(z.dtype))
    assert torch.equal(z[:, 1], smap.core.L_init.expand(4, 82, 64).to(z.dtype))
    carry = split_state(z)
    assert torch.equal(join_carry(carry), z)
    with torch.no_grad():
        for t in range(10):  # wraps around after one segment
            assert smap.kind == smap.schedule[t % 8]
            expected = join_carry(smap.core.apply(smap.kind, split_state(z), smap.x, smap.cos_sin))
            z_next = smap.step(z)
            assert torch.equal(z_next, expected)
            changed = 1 if smap.schedule[t % 8] == "L" else 0  # an L-update leaves z_H alone and vice versa
            assert torch.equal(z_next[:, 1 - changed], z[:, 1 - changed])
            z = z_next
    smap.reset()
    assert smap.position == 0


@pytest.mark.parametrize("name", MODELS)
def test_manual_push_matches_func_push_over_a_segment(name):
    """float64: closed-form JVPs vs torch.func.jvp through every sub-update of one segment;
    tolerance 1e-10 relative (summation order only). The manual primal equals step() exactly."""
    smap, _ = fixture_map(name, dtype="float64", n=2)
    z = smap.initial_state()
    g = torch.Generator().manual_seed(0)
    tangents = torch.randn(2, 3, *z.shape[1:], generator=g, dtype=torch.float64)
    for _ in range(smap.sub_updates_per_segment):
        position = smap.position
        with torch.no_grad():
            z_step = smap.step(z)
        smap.position = position
        z_f, t_f = smap.push(z, tangents, "func")
        smap.position = position
        z_m, t_m = smap.push(z, tangents, "manual")
        assert torch.equal(z_m, z_step)
        assert (z_f - z_m).abs().max() < 1e-12
        assert (t_f - t_m).abs().max() < 1e-10 * t_f.abs().max()
        z, tangents = z_m, t_m / t_m.flatten(2).norm(dim=-1)[..., None, None, None]


@pytest.mark.parametrize("t_ons", [1, 3])
def test_segment_ftle_equals_lyapunov_log_r_continued_per_segment(t_ons):
    """Test hypothesis: segment_ftle has lyapunov_log_r's semantics called once per segment with
    the frame carried over (QR every t_ons sub-updates and at each segment end). Same generator,
    same numbers; float64, tolerance 1e-10 (QR round-off)."""
    smap, _ = fixture_map("trm_att", dtype="float64")
    segments, k = 2, 3
    result = segment_ftle(smap, segments=segments, k=k, t_ons=t_ons, generator=torch.Generator().manual_seed(7), jvp_impl="func")
    smap.reset()
    z, frame, sums = smap.initial_state(), None, []
    gen = torch.Generator().manual_seed(7)
    with math_sdpa():
        for _ in range(segments):
            r = lyapunov_log_r(smap.step, z, n_steps=8, k=k, t_ons=t_ons, generator=gen, tangents=frame, return_state=True)
            z, frame = r.state, r.tangents
            sums.append(r.log_r.double().sum(1))
    np.testing.assert_allclose(result.log_r_segment.numpy(), torch.stack(sums, 1).numpy(), atol=1e-10)
    assert torch.equal(result.state, z)


def test_segment_ftle_manual_matches_func_and_reads_out_the_same_trajectory():
    smap, batch = fixture_map("trm_mlp", dtype="float64")
    kwargs = dict(segments=2, k=4, generator=None)
    manual = segment_ftle(smap, tangents=torch.randn(4, 4, 2, 97, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64), **kwargs)
    func = segment_ftle(smap, tangents=torch.randn(4, 4, 2, 97, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64), jvp_impl="func", **kwargs)
    np.testing.assert_allclose(manual.log_r_segment.numpy(), func.log_r_segment.numpy(), atol=1e-9)
    _, readouts = rollout(smap, 2)
    assert torch.equal(manual.readouts.preds, readouts.preds) and torch.equal(manual.readouts.q_halt, readouts.q_halt)
    lam = manual.exponents()
    assert lam.shape == (4, 4) and torch.all(lam[:, :-1] >= lam[:, 1:])
    np.testing.assert_allclose(lam.numpy(), np.sort(manual.log_r_segment.sum(1).numpy() / 16, axis=-1)[:, ::-1])
    np.testing.assert_allclose(manual.exponents(start=1).numpy(), np.sort(manual.log_r_segment[:, 1].numpy() / 8, axis=-1)[:, ::-1])


def test_exact_ignores_masked_cells():
    preds = torch.tensor([[[1, 2, 3], [1, 2, 4]]])  # (B=1, 2 segments, L=3)
    readouts = SegmentReadouts(preds, torch.zeros(1, 2), torch.zeros(1, 2))
    assert readouts.exact(torch.tensor([[1, 2, -100]])).tolist() == [[True, True]]
    assert readouts.exact(torch.tensor([[1, 2, 3]])).tolist() == [[True, False]]


def test_user_errors_are_one_readable_sentence():
    smap, batch = fixture_map("trm_mlp")
    with pytest.raises(ConfigError, match=r"k=0 tangent vectors do not fit a state of dimension 12416"):
        segment_ftle(smap, segments=1, k=0)
    with pytest.raises(ConfigError, match=r"jvp_impl='jax' is not one of \['manual', 'func'\]"):
        segment_ftle(smap, segments=1, k=1, jvp_impl="jax")
    with pytest.raises(ConfigError, match="segments=0 must be >= 1"):
        rollout(smap, 0)
    smap.core.train()
    with pytest.raises(ConfigError, match="must be in eval mode"):
        SubUpdateMap(smap.core, batch)
    smap.core.eval()


def test_keep_freed_memory_reports_whether_glibc_took_the_setting():
    import platform

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
