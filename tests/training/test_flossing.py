"""Gradient flossing (training/flossing.py): the differentiable FTLE estimator and the training term.

Known answers: for a constant linear map A the finite-time exponents are log|eigenvalues of A|,
exactly for a diagonal A with the frame on its axes, and with an O(1/T) error otherwise; the
gradient of sum_i (lambda_i - c)^2 w.r.t. A's diagonal is then 2 (log|d_i| - c) / d_i. On a model,
the estimate equals the diagnostics estimator (closed-form JVPs, no graph) on the same frame, and
its gradient matches central finite differences. In training runs: `regularize=none` is
bit-identical to a loop without the term, the term logs its exponents, is exactly resumable, and
pulls the exponents towards the target.
"""
from __future__ import annotations

import math

import pytest
import torch

from model_core.core import LatentCarry
from model_core.registry import build_model
from puzzles.build import build_dataset
from puzzles.builders import SudokuGenConfig
from runtime.errors import ConfigError
from tests.integration.helpers import assert_same, compose_pretrain, load, tiny_overrides, train, train_records, training_state
from training import loop as training
from training.flossing import Flosser, FlossingConfig, carry_exponents, ftle
from trm.config import TRMConfig


def _linear(a: torch.Tensor):
    """z (B, n) -> z A^T (one constant map for every row)."""
    return lambda z: z @ a.T


# --- the estimator on linear maps -------------------------------------------------------------------

def test_diagonal_map_with_aligned_frame_is_exact():
    """Test hypothesis: A = diag(d) keeps the axes; starting the frame on them, each QR step has
    R = diag(|d|) and Q = the axes up to sign, so lambda_i = log|d_i| to round-off (tolerance 1e-12
    in float64 after 50 steps), sorted descending whatever the order of d."""
    d = torch.tensor([0.3, -1.5, 0.8, 0.05], dtype=torch.float64)
    z0 = torch.randn(2, 4, dtype=torch.float64)
    frame = torch.eye(4, dtype=torch.float64)[[1, 2, 0]].expand(2, 3, 4)  # the top 3 axes
    lam = ftle([_linear(torch.diag(d))] * 50, z0, frame)
    expected = torch.tensor([math.log(1.5), math.log(0.8), math.log(0.3)], dtype=torch.float64)
    torch.testing.assert_close(lam, expected.expand(2, 3), atol=1e-12, rtol=0)


def test_non_normal_map_converges_like_one_over_t():
    """A = P diag(2, 0.5, 0.25) P^-1 with a random (non-orthogonal) P, random frame: the estimate
    tends to log|d| with an O(1/T) transient error (analysis.md section 7), so the error at T = 400
    is below 0.05 and at least 4x below the error at T = 25 (1/T predicts 16x)."""
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(3, 3, generator=gen, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64)
    a = p @ torch.diag(torch.tensor([2.0, 0.5, 0.25], dtype=torch.float64)) @ torch.linalg.inv(p)
    z0 = torch.randn(1, 3, generator=gen, dtype=torch.float64)
    frame = torch.randn(1, 3, 3, generator=gen, dtype=torch.float64)
    expected = torch.log(torch.tensor([2.0, 0.5, 0.25], dtype=torch.float64))
    err = {t: (ftle([_linear(a)] * t, z0, frame)[0] - expected).abs().max().item() for t in (25, 400)}
    assert err[400] < 0.05
    assert err[400] < err[25] / 4


def test_gradient_of_the_term_is_the_known_answer():
    """sum_i (log|d_i| - c)^2 for A = diag(d), frame on the axes: d/dd_i = 2 (log|d_i| - c) / d_i,
    through 20 tangent pushes and QRs (tolerance 1e-10, float64 round-off)."""
    d = torch.tensor([1.7, 0.9, 0.4], dtype=torch.float64, requires_grad=True)
    c = -0.2
    lam = ftle([_linear(torch.diag(d))] * 20, torch.randn(1, 3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)[None])
    (lam - c).square().sum().backward()
    expected = 2 * (d.detach().log() - c) / d.detach()
    torch.testing.assert_close(d.grad, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("k", [1, 3])
def test_gradient_through_a_nonlinear_map_matches_finite_differences(k):
    """z -> tanh(W z) (state-dependent Jacobian, so the primal path matters too), random frame:
    autograd's directional derivative of the term equals the central difference with step 1e-6
    (truncation error ~1e-12, round-off ~1e-10 in float64; tolerance 1e-7 relative)."""
    gen = torch.Generator().manual_seed(1)
    w = (1.5 * torch.randn(4, 4, generator=gen, dtype=torch.float64)).requires_grad_(True)
    v = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    z0 = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    frame = torch.randn(3, k, 4, generator=gen, dtype=torch.float64)

    def term(weight: torch.Tensor) -> torch.Tensor:
        lam = ftle([lambda z: torch.tanh(z @ weight.T)] * 12, z0, frame)
        return (lam - 0.1).square().sum(-1).mean()

    term(w).backward()
    h = 1e-6
    with torch.no_grad():
        fd = (term(w + h * v) - term(w - h * v)) / (2 * h)
    assert (w.grad * v).sum().item() == pytest.approx(fd.item(), rel=1e-7)


def test_bad_estimator_input_is_one_line():
    z0 = torch.zeros(1, 3)
    with pytest.raises(ConfigError, match="k=4 tangent vectors do not fit a state of dimension 3"):
        ftle([lambda z: z], z0, torch.zeros(1, 4, 3))
    with pytest.raises(ConfigError, match="needs at least one step"):
        ftle([], z0, torch.zeros(1, 1, 3))


# --- the estimator on the recursion -----------------------------------------------------------------

def _core(mlp_t: bool, dtype: str = "float64"):
    cfg = TRMConfig(hidden_size=16, num_heads=2, expansion=2, H_cycles=2, L_cycles=2, L_layers=1, halt_max_steps=4,
                    puzzle_emb_ndim=16, puzzle_emb_len=1, pos_encodings="none" if mlp_t else "rope", mlp_t=mlp_t, forward_dtype=dtype)
    cfg.derive_from_data(vocab_size=6, seq_len=16, num_puzzle_identifiers=1, batch_size=4)
    torch.manual_seed(0)
    core = build_model(cfg).model.inner
    # Master weights are float32 even for a float64 forward; a finite difference needs them in
    # float64 too (a 1e-6 step on a float32 weight is rounded by ~1%).
    return core.to(torch.float64) if dtype == "float64" else core


def _batch(n: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return {"inputs": torch.randint(0, 6, (n, 16), generator=gen, dtype=torch.int32), "puzzle_identifiers": torch.zeros(n, dtype=torch.int32)}


@pytest.mark.parametrize("mlp_t", [False, True], ids=["attention", "mlp_t"])
def test_model_estimate_equals_the_diagnostics_estimator(mlp_t):
    """Test hypothesis: `carry_exponents` over one segment (6 sub-updates) from the reset carry is
    `diagnostics.adapters.step_map.segment_ftle` (closed-form JVPs, no graph) on the same frame;
    both are float64, tolerance 1e-10 (different JVP arithmetic, same maths)."""
    from diagnostics.adapters.step_map import SubUpdateMap, segment_ftle  # noqa: PLC0415

    core = _core(mlp_t)
    batch = _batch(3)
    frame = torch.randn(3, 4, 2, 17, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    carry = core.initial_carry(3)
    ours = carry_exponents(core, carry, batch, window=6, frame=frame)
    core.eval()
    ref = segment_ftle(SubUpdateMap(core, batch), segments=1, k=4, tangents=frame).exponents()
    torch.testing.assert_close(ours.detach(), ref, atol=1e-10, rtol=0)


def test_model_gradient_matches_finite_differences():
    """Directional derivative of the term w.r.t. the first block's channel-MLP weight (float64,
    k = 2, 4 sub-updates from a non-trivial carry) against a central difference with step 1e-6;
    tolerance 1e-6 relative (round-off of a float64 difference quotient through ~100 ops)."""
    core = _core(mlp_t=True)
    batch = _batch(2)
    gen = torch.Generator().manual_seed(4)
    carry = LatentCarry(torch.randn(2, 17, 16, generator=gen, dtype=torch.float64), torch.randn(2, 17, 16, generator=gen, dtype=torch.float64))
    frame = torch.randn(2, 2, 2, 17, 16, generator=gen, dtype=torch.float64)
    weight = core.L_level.layers[0].mlp.down_proj.weight
    v = torch.randn(weight.shape, generator=gen, dtype=torch.float64)

    def term() -> torch.Tensor:
        return carry_exponents(core, carry, batch, window=4, frame=frame).square().sum(-1).mean()

    term().backward()
    analytic = (weight.grad * v).sum().item()
    h = 1e-6
    with torch.no_grad():
        weight += h * v
        plus = term()
        weight -= 2 * h * v
        minus = term()
        weight += h * v
    assert analytic == pytest.approx(((plus - minus) / (2 * h)).item(), rel=1e-6)


def test_puzzle_table_is_read_without_touching_the_training_copy():
    """The sparse puzzle embedding stays in training mode with its local rows untouched, and a
    sub-batch smaller than the built batch is accepted (no row-count error)."""
    core = _core(mlp_t=True, dtype="float32")
    core.train()
    table = core.puzzle_emb
    before = table.local_weights.clone()
    carry_exponents(core, core.initial_carry(2), _batch(2), window=2, frame=torch.randn(2, 1, 2, 17, 16)).sum().backward()
    assert table.training and torch.equal(table.local_weights, before) and table.local_weights.grad is None
    assert core.embed_tokens.embedding_weight.grad is not None  # the token embedding is regularised


# --- config and the term ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"mode": "floss"}, "regularize.mode='floss' is not one of none, flossing"),
    ({"mode": "flossing", "k": 0}, "regularize.k=0 must be >= 1"),
    ({"mode": "flossing", "window": 0}, "regularize.window=0 must be >= 1"),
    ({"mode": "flossing", "weight": -1.0}, "regularize.weight=-1.0 must be >= 0"),
    ({"mode": "flossing", "target": float("nan")}, "regularize.target=nan must be finite"),
])
def test_invalid_settings_name_the_key(kw, message):
    with pytest.raises(ConfigError, match=message):
        FlossingConfig(**kw).validate()


def test_sub_batch_larger_than_the_rank_batch_is_refused():
    with pytest.raises(ConfigError, match="regularize.sub_batch=16 exceeds the per-rank batch of 8 rows"):
        Flosser(FlossingConfig(mode="flossing", sub_batch=16), per_rank_batch=8, seed=0, rank=0, world_size=1)


def test_compose_selects_the_group_and_rejects_unknown_keys():
    cfg = compose_pretrain(["arch=trm_debug", "regularize=flossing", "regularize.k=2"])
    assert isinstance(cfg.regularize, FlossingConfig) and cfg.regularize.mode == "flossing" and cfg.regularize.k == 2
    assert compose_pretrain(["arch=trm_debug"]).regularize == FlossingConfig()  # off by default
    with pytest.raises(Exception, match="regularize.wieght|wieght"):
        compose_pretrain(["arch=trm_debug", "regularize=flossing", "regularize.wieght=1"])


# --- in training runs -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory):
    """The 4x4 Sudoku of the integration tests (256 train, 64 test puzzles)."""
    out = tmp_path_factory.mktemp("data") / "sudoku4"
    return build_dataset(SudokuGenConfig(out=str(out), n_train=256, n_test=64, givens=10, size=4, seed=0))


class NoFlosser:
    """Stands in for Flosser as if the module did not exist: touches nothing, logs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def backward(self, *args) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}


def test_none_is_bit_identical_to_training_without_the_term(sudoku4, tmp_path, monkeypatch):
    """regularize=none (the default) vs a loop whose Flosser is a no-op stand-in: the same
    weights, optimizer state, RNG and carry bit for bit, and the same logged losses."""
    off = tmp_path / "off"
    train(tiny_overrides(sudoku4, off, "max_steps=12", "regularize=none"))
    monkeypatch.setattr(training, "Flosser", NoFlosser)
    absent = tmp_path / "absent"
    train(tiny_overrides(sudoku4, absent, "max_steps=12"))
    assert_same(training_state(load(off / "checkpoints" / "last.pt")), training_state(load(absent / "checkpoints" / "last.pt")))
    assert train_records(off) == train_records(absent)
    assert not any(k.startswith("train/floss") for r in train_records(off).values() for k in r)


def test_flossing_logs_its_exponents_and_resumes_exactly(sudoku4, tmp_path):
    """interval 2, k 2, with the EMA: exponents and the term are logged on even steps only, the
    weights differ from the unregularised run, and 6 + 6 resumed steps equal 12 straight ones bit
    for bit (rows and frames come from a (seed, rank, step) generator)."""
    extra = ("regularize=flossing", "regularize.k=2", "regularize.window=3", "regularize.interval=2", "regularize.sub_batch=4",
             "optim.ema=true", "checkpoint_interval=6")
    straight, split, off = tmp_path / "straight", tmp_path / "split", tmp_path / "off"
    train(tiny_overrides(sudoku4, straight, "max_steps=12", *extra))
    train(tiny_overrides(sudoku4, split, "max_steps=6", *extra))
    train(tiny_overrides(sudoku4, split, "max_steps=12", "resume=auto", *extra))
    train(tiny_overrides(sudoku4, off, "max_steps=12", "optim.ema=true"))
    records = train_records(straight)
    keys = {"train/floss_loss", "train/floss_lambda_1", "train/floss_lambda_2"}
    assert [s for s, r in sorted(records.items()) if keys <= set(r)] == [2, 4, 6, 8, 10, 12]
    assert not any(k.startswith("train/floss") for s in (1, 3, 5) for k in records[s])
    r = records[12]
    assert r["train/floss_lambda_1"] >= r["train/floss_lambda_2"]
    assert r["train/floss_loss"] == pytest.approx(r["train/floss_lambda_1"] ** 2 + r["train/floss_lambda_2"] ** 2, rel=0.5)
    assert_same(training_state(load(straight / "checkpoints" / "last.pt")), training_state(load(split / "checkpoints" / "last.pt")))
    assert train_records(straight) == train_records(split)
    a, b = load(straight / "checkpoints" / "last.pt")["model"], load(off / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_the_term_pulls_the_exponents_towards_the_target(sudoku4, tmp_path):
    """Same run twice, both estimating lambda_1 every step; weight 0 (measured, not pushed) vs
    weight 10 towards target -1: over the last 5 of 20 steps the pushed run's lambda_1 is lower."""
    common = ("max_steps=20", "regularize=flossing", "regularize.window=4", "regularize.target=-1.0")
    free, pushed = tmp_path / "free", tmp_path / "pushed"
    train(tiny_overrides(sudoku4, free, *common, "regularize.weight=0.0"))
    train(tiny_overrides(sudoku4, pushed, *common, "regularize.weight=10.0"))
    late = lambda d: sum(r["train/floss_lambda_1"] for s, r in train_records(d).items() if s > 15) / 5  # noqa: E731
    assert late(pushed) < late(free) - 0.05, (late(pushed), late(free))


@pytest.mark.dist
def test_two_ranks_floss_their_own_rows(sudoku4, tmp_path):
    """torchrun, 2 CPU ranks: each rank flosses its own sub-batch, the logged exponents are the
    mean over ranks (rank 0 alone writes them), and the run finishes like a plain one."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tests.integration.helpers import REPO, cli_env  # noqa: PLC0415

    run_dir = tmp_path / "dist"
    args = tiny_overrides(sudoku4, run_dir, "max_steps=4", "regularize=flossing", "regularize.sub_batch=4", "regularize.window=3")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "pretrain.py", *args],
                          cwd=REPO, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    records = train_records(run_dir)
    assert sorted(records) == [1, 2, 3, 4]
    assert all(math.isfinite(r["train/floss_lambda_1"]) and r["train/floss_loss"] >= 0 for r in records.values())
