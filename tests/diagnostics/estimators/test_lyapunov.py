"""Known-answer tests of the Benettin/QR estimator (diagnostics.estimators.lyapunov).

Each test states its hypothesis, the source of the reference and why its tolerance is what it is.
Pinned outputs on fixed inputs live apart, in test_regression.py.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from diagnostics.estimators import systems
from diagnostics.estimators.lyapunov import (
    lyapunov_log_r,
    lyapunov_spectrum,
    orthonormalise,
    push_tangents,
    seed_method_lambda1,
)
from runtime.errors import ConfigError

F64, F32 = torch.float64, torch.float32


def gen(device: torch.device | str = "cpu", seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def start(system: systems.KnownSystem, batch: int, dtype: torch.dtype, device, settle: int = 0) -> torch.Tensor:
    return system.settle(system.sample(batch, gen("cpu"), dtype).to(device), settle)


def ref(system: systems.KnownSystem, device, dtype=F64) -> torch.Tensor:
    return torch.tensor(system.exponents, dtype=dtype, device=device)


# ---------------------------------------------------------------- linear maps


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (F32, 1e-5)])
def test_diagonal_map_exact_to_roundoff(device, dtype, tol):
    """Test hypothesis: for diag(1.5, 0.8, 0.3, 0.05) the estimator returns log d exactly once the
    frame is aligned with the axes (warmup 100: misalignment (0.8/1.5)^100 ~ 1e-27).
    Reference: exact. Tolerance: round-off of one log|R_ii| per step (float32 also rounds d)."""
    system = systems.diagonal_map()
    lam = lyapunov_spectrum(system.step, start(system, 3, dtype, device), n_steps=500, k=4, warmup=100, generator=gen(device))
    assert lam.dtype == dtype and lam.shape == (3, 4)
    assert torch.allclose(lam.double(), ref(system, device).expand(3, 4), atol=tol, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (F32, 1e-5)])
def test_symmetric_map_log_abs_eigenvalues(device, dtype, tol):
    """Test hypothesis: O diag(2, -0.9, 0.5, 0.1) O^T gives log|e_i| (negative eigenvalue
    included); a normal matrix's QR frame converges to its eigenvectors, after which each R is
    diagonal. Reference: exact. Tolerance: round-off."""
    system = systems.symmetric_map()
    lam = lyapunov_spectrum(system.step, start(system, 2, dtype, device), n_steps=500, k=4, warmup=100, generator=gen(device))
    assert torch.allclose(lam.double(), ref(system, device).expand(2, 4), atol=tol, rtol=0)


def test_shear_map_error_decays_like_one_over_T():
    """Test hypothesis: without warmup, on the non-normal [[1.2, 4], [0, 0.5]] the error of
    lambda_1 is c/T (c = log of the initial frame's component along the eigenvector) up to
    (0.5/1.2)^T, so err * T is the same constant at every T while err itself halves per doubling;
    lambda_1 + lambda_2 = log|det A| exactly at every T. Reference: exact eigenvalues.
    Tolerance: round-off relative to c (1e-9), 1e-12 for the sum."""
    system = systems.shear_map()
    expected = ref(system, "cpu")
    scaled = []
    for n_steps in (50, 100, 200, 400, 800):
        lam = lyapunov_spectrum(system.step, torch.zeros(3, 2, dtype=F64), n_steps=n_steps, k=2, generator=gen())
        err = lam - expected
        scaled.append(err * n_steps)
        assert torch.allclose(lam.sum(1), torch.full((3,), math.log(1.2 * 0.5), dtype=F64), atol=1e-12, rtol=0)
    c = scaled[0]
    assert (c.abs() > 0.1).all()  # a real transient, not a coincidence
    for s in scaled[1:]:
        assert torch.allclose(s, c, rtol=1e-9, atol=0)
    errs = [(s / n).abs() for s, n in zip(scaled, (50, 100, 200, 400, 800))]
    assert all(torch.allclose(b / a, torch.full_like(a, 0.5), rtol=1e-9) for a, b in zip(errs, errs[1:]))


def test_inverse_linear_map_negates_spectrum():
    """Test hypothesis: the exponents of A^-1 are minus those of A in reverse order (here a
    non-normal A with |eigenvalues| 2, 0.7, 0.25). Reference: exact. Tolerance: round-off; the
    frame is aligned by warmup, so only per-step rounding (~1e-16) remains."""
    p = torch.tensor([[1.0, 0.4, -0.3], [0.2, 1.0, 0.5], [0.1, -0.6, 1.0]], dtype=F64)
    a = p @ torch.diag(torch.tensor([2.0, -0.7, 0.25], dtype=F64)) @ torch.linalg.inv(p)
    fwd, inv = systems.linear_map(a), systems.linear_map(torch.linalg.inv(a))
    z0 = torch.zeros(2, 3, dtype=F64)
    lam = lyapunov_spectrum(fwd.step, z0, n_steps=300, k=3, warmup=100, generator=gen())
    lam_inv = lyapunov_spectrum(inv.step, z0, n_steps=300, k=3, warmup=100, generator=gen())
    assert torch.allclose(lam_inv, -lam.flip(-1), atol=1e-12, rtol=0)
    assert torch.allclose(lam[0], torch.tensor([2.0, 0.7, 0.25], dtype=F64).log(), atol=1e-12, rtol=0)


def test_t_ons_does_not_change_the_answer_on_linear_maps():
    """Test hypothesis: QR every t_ons steps gives the same sums as every step (the R factor of a
    product is the product of R factors), also when n_steps is not a multiple of t_ons (last block
    shorter). Same seed, no warmup. Reference: t_ons = 1. Tolerance: t_ons = 7 QR-factorises a
    frame with condition number (2/0.1)^7 ~ 1e9, losing ~1e9 * eps relative accuracy in the
    smallest R_ii (measured 2e-10), hence 1e-8."""
    system = systems.symmetric_map()
    z0 = torch.zeros(2, 4, dtype=F64)
    base = lyapunov_spectrum(system.step, z0, n_steps=100, k=4, t_ons=1, generator=gen())
    for t_ons in (3, 7):
        result = lyapunov_log_r(system.step, z0, n_steps=100, k=4, t_ons=t_ons, generator=gen())
        assert result.log_r.shape == (2, math.ceil(100 / t_ons), 4)
        assert torch.allclose(result.exponents(), base, atol=1e-8, rtol=0)


# ---------------------------------------------------------------- chaotic maps and flows


@pytest.mark.parametrize("dtype", [F64, F32])
def test_henon_known_exponents(device, dtype):
    """Test hypothesis: Henon (1.4, 0.3) has (0.41922, -1.62319) (Sprott 2003). B = 1024
    trajectories of T = 1000 steps after settling; the batch standard error is 3.7e-4, so the
    tolerance 2e-3 is ~5 s.e. (plus the 5-decimal reference). float32 trajectories differ
    pointwise but not statistically."""
    system = systems.henon()
    lam = lyapunov_spectrum(system.step, start(system, 1024, dtype, device, settle=500), n_steps=1000, k=2, warmup=100, generator=gen(device))
    assert torch.isfinite(lam).all()
    assert torch.allclose(lam.double().mean(0), ref(system, device), atol=2e-3, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (F32, 2e-6)])
def test_henon_sum_is_ln_b_at_every_T(device, dtype, tol):
    """Test hypothesis: det J = -0.3 everywhere and the log|R_ii| of a full frame sum to
    log|det J| at each step, so lambda_1 + lambda_2 = ln 0.3 in every example at every T, even
    T = 1 with no warmup. Reference: exact. Tolerance: round-off (float32: a few ulps of ln 0.3)."""
    system = systems.henon()
    z0 = start(system, 16, dtype, device, settle=100)
    for n_steps in (1, 10, 100, 500):
        lam = lyapunov_spectrum(system.step, z0, n_steps=n_steps, k=2, generator=gen(device))
        assert ((lam.sum(1).double() - math.log(0.3)).abs() <= tol).all(), n_steps


def test_logistic_map_ln2():
    """Test hypothesis: the logistic map at r = 4 has lambda = ln 2; being conjugate to the tent
    map with |slope| 2, its finite-time exponent is ln 2 + O(1/T) per trajectory, no diffusion.
    float64 only (in float32 orbits reach the fixed points). Reference: exact. Tolerance 1e-3
    as in the analysis; the measured error is ~1e-5."""
    system = systems.logistic()
    lam = lyapunov_spectrum(system.step, start(system, 256, F64, "cpu", settle=50), n_steps=1000, k=1, generator=gen())
    assert abs(float(lam.mean()) - math.log(2.0)) < 1e-3


def test_lorenz_sum_is_minus_trace():
    """Test hypothesis: a full frame's log|R_ii| sum to log|det J| of the RK4 step, which equals
    trace(Df) dt = -(10 + 1 + 8/3) dt up to RK4's O(dt^4) error; so the sum per unit time is
    -13.667 in every example at any T, here T = 100 without warmup. Reference: constant trace of
    the Lorenz field. Tolerance: 1e-3 (RK4 error in log det at dt = 0.01 is ~1e-4)."""
    system = systems.lorenz()
    lam = lyapunov_spectrum(system.step, start(system, 16, F64, "cpu", settle=500), n_steps=100, k=3, generator=gen()) / system.dt
    assert ((lam.sum(1) + (10 + 1 + 8 / 3)).abs() < 1e-3).all()


@pytest.mark.slow
def test_lorenz_exponents_per_unit_time():
    """Test hypothesis: the RK4 map of Lorenz (10, 28, 8/3) at dt = 0.01 has, per unit time,
    lambda ~ (0.9056, 0, -14.5723) (Sprott 2003). B = 512 trajectories of 10 time units after
    5 units of warmup (frame misalignment e^(-0.9 * 5) ~ 1e-2, bias ~1e-3): standard error
    ~7e-3 (lambda_1, lambda_3) and ~4e-3 (lambda_2), so tolerances 0.04 / 0.02 (~5 s.e.)."""
    system = systems.lorenz()
    lam = lyapunov_spectrum(system.step, start(system, 512, F64, "cpu", settle=2000), n_steps=1000, k=3, warmup=500, generator=gen()) / system.dt
    mean = lam.mean(0)
    assert abs(float(mean[0]) - 0.9056) < 0.04
    assert abs(float(mean[1])) < 0.02
    assert abs(float(mean[2]) + 14.5723) < 0.04


# ---------------------------------------------------------------- invariants for any map


@pytest.mark.parametrize("dtype", [F64, F32])
def test_sum_equals_log_det_on_random_mlp(device, dtype):
    """Test hypothesis: for any map, the sum of the k = D log|R_ii| of one step equals
    log|det J| at the visited state (J Q = Q' R, Q orthogonal), checked per step against slogdet
    of the analytic Jacobian of a random tanh MLP, running the estimator one step at a time (this
    also exercises continuing from a returned state and frame). Reference: float64 slogdet.
    Tolerance: the smallest R_ii of J Q carries a relative error ~cond(J) * eps, so per step
    10 * cond(J) * eps (cond(J) reaches ~1e4 here: ~1e-11 in float64, ~1e-3 in float32)."""
    system = systems.mlp_map()
    z = start(system, 8, dtype, device)
    frame, g = None, gen(device)
    eps = torch.finfo(dtype).eps
    for _ in range(20):
        jac = system.jacobian(z).double()
        log_det = torch.linalg.slogdet(jac).logabsdet  # (B,)
        res = lyapunov_log_r(system.step, z, n_steps=1, k=6, generator=g, tangents=frame, return_state=True)
        z, frame = res.state, res.tangents
        tol = 10 * eps * (torch.linalg.cond(jac) + log_det.abs())
        assert ((res.log_r[:, 0].double().sum(-1) - log_det).abs() <= tol).all()


def test_conjugation_bound_pointwise():
    """Test hypothesis: for g = P f P^-1 with the frame mapped by P too, the partial sums of the
    first j log|R_ii| differ from f's by at most j log cond(P) (volume distortion of P at both
    ends), so |lambda_j(g) - lambda_j(f)| <= (2j - 1) log cond(P) / T per example, and the
    difference shrinks as T grows. Henon over T <= 40 steps so the two float64 orbits agree
    pointwise (rounding grows like e^(0.42 T) ~ 1e-9). Reference: the bound. Tolerance: 1e-9."""
    p = torch.tensor([[1.0, 0.5], [0.3, 1.2]], dtype=F64)
    log_cond = math.log(float(torch.linalg.cond(p)))
    f, g = systems.henon(), systems.conjugate(systems.henon(), p)
    z0 = start(f, 64, F64, "cpu", settle=200)
    frame = torch.randn(64, 2, 2, generator=gen(), dtype=F64)
    worst = []
    for n_steps in (10, 20, 40):
        rf = lyapunov_log_r(f.step, z0, n_steps=n_steps, k=2, tangents=frame)
        rg = lyapunov_log_r(g.step, z0 @ p.T, n_steps=n_steps, k=2, tangents=frame @ p.T)
        diff = (rg.log_r.sum(1) - rf.log_r.sum(1)).abs() / n_steps  # (B, 2), column order
        bound = torch.tensor([1.0, 3.0], dtype=F64) * log_cond / n_steps
        assert (diff <= bound + 1e-9).all(), n_steps
        worst.append(float(diff.max()))
    assert worst[2] < worst[0]


@pytest.mark.slow
def test_conjugation_invariance_statistical():
    """Test hypothesis: P f P^-1 has the same exponents as f (Henon, P with cond 2.2); over
    B = 1024, T = 1000 the batch means agree within the combined standard error (~5e-4 if
    independent, less since the orbits start conjugate). Reference: f's estimate. Tolerance 1e-3."""
    p = torch.tensor([[1.0, 0.5], [0.3, 1.2]], dtype=F64)
    f, g = systems.henon(), systems.conjugate(systems.henon(), p)
    z0 = start(f, 1024, F64, "cpu", settle=500)
    lam_f = lyapunov_spectrum(f.step, z0, n_steps=1000, k=2, warmup=50, generator=gen())
    lam_g = lyapunov_spectrum(g.step, z0 @ p.T, n_steps=1000, k=2, warmup=50, generator=gen())
    assert torch.allclose(lam_g.mean(0), lam_f.mean(0), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- API contract


def test_output_sorted_descending_even_when_columns_are_not():
    """Test hypothesis: QR columns are ordered by growth only asymptotically; with T = 1 from a
    random frame some examples' raw column sums are out of order, yet the returned exponents are
    sorted descending in every row and are a permutation of the column sums."""
    system = systems.mlp_map()
    z0 = start(system, 64, F64, "cpu")
    result = lyapunov_log_r(system.step, z0, n_steps=1, k=6, generator=gen())
    raw = result.log_r.sum(1)
    assert (raw[:, :-1] < raw[:, 1:]).any()
    lam = result.exponents()
    assert (lam[:, :-1] >= lam[:, 1:]).all()
    assert torch.equal(lam, raw.sort(-1, descending=True).values)


def test_continuing_from_returned_state_matches_one_run():
    """Test hypothesis: two calls of 30 steps, the second starting from the first's state and
    frame, reproduce one call of 60 steps (the re-orthonormalisation of an orthonormal frame only
    flips signs). Tolerance: round-off in the frame, contracted by the tangent dynamics."""
    system = systems.henon()
    z0 = start(system, 8, F64, "cpu", settle=100)
    whole = lyapunov_log_r(system.step, z0, n_steps=60, k=2, generator=gen())
    first = lyapunov_log_r(system.step, z0, n_steps=30, k=2, generator=gen(), return_state=True)
    second = lyapunov_log_r(system.step, first.state, n_steps=30, k=2, tangents=first.tangents)
    assert first.state.shape == (8, 2) and first.tangents.shape == (8, 2, 2)
    assert second.state is None and second.tangents is None
    assert torch.allclose(torch.cat([first.log_r, second.log_r], 1), whole.log_r, atol=1e-10, rtol=0)


def test_any_state_shape_and_meta():
    """Test hypothesis: states of any shape (B, *S) are flattened per example for the QR and the
    frame keeps the shape (B, k, *S); a (B, 2, 3) diagonal map gives log of its 6 factors."""
    d = torch.tensor([[1.5, 0.9, 0.5], [0.4, 0.2, 0.1]], dtype=F64)
    result = lyapunov_log_r(lambda z: z * d, torch.zeros(2, 2, 3, dtype=F64), n_steps=200, k=6, warmup=50, generator=gen(), return_state=True)
    assert result.tangents.shape == (2, 6, 2, 3)
    assert torch.allclose(result.exponents(), d.flatten().log().sort(descending=True).values.expand(2, 6), atol=1e-12)
    assert result.meta() == {"estimator": "benettin_qr_jvp", "k": 6, "t_ons": 1, "n_steps": 200, "warmup": 50, "dtype": "float64"}


def test_orthonormalise_clips_log_r_at_1e_minus_30():
    """Test hypothesis: a collapsed tangent gives log(1e-30), not -inf, for k = 1 and k > 1."""
    q, log_r = orthonormalise(torch.zeros(2, 1, 3, dtype=F64))
    assert torch.allclose(log_r, torch.full((2, 1), math.log(1e-30), dtype=F64))
    frame = torch.tensor([[[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]], dtype=F64)
    q, log_r = orthonormalise(frame)
    assert float(log_r[0, 0]) == 0.0 and float(log_r[0, 1]) == pytest.approx(math.log(1e-30))
    assert torch.allclose(q.flatten(2) @ q.flatten(2).transpose(1, 2), torch.eye(2, dtype=F64))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"k": 5, "n_steps": 10}, "k=5 tangent vectors do not fit a state of dimension 4 per example; use 1 <= k <= 4"),
        ({"k": 0, "n_steps": 10}, "k=0 tangent vectors do not fit a state of dimension 4 per example; use 1 <= k <= 4"),
        ({"k": 2, "n_steps": 0}, "n_steps must be at least 1 to estimate an exponent, got 0"),
        ({"k": 2, "n_steps": 10, "t_ons": 0}, "t_ons (steps between re-orthonormalisations) must be at least 1, got 0"),
        ({"k": 2, "n_steps": 10, "warmup": -1}, "warmup must be a number of steps >= 0, got -1"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs, message):
    system = systems.diagonal_map()
    with pytest.raises(ConfigError) as info:
        lyapunov_spectrum(system.step, torch.zeros(2, 4, dtype=F64), **kwargs)
    assert str(info.value) == message


def test_invalid_state_and_tangents_raise():
    step = systems.diagonal_map().step
    with pytest.raises(ConfigError, match="must be float32 or float64, got torch.int64"):
        lyapunov_spectrum(step, torch.zeros(2, 4, dtype=torch.int64), n_steps=1, k=1)
    with pytest.raises(ConfigError, match=r"must be batched as \(B, ...\), got shape \(4,\)"):
        lyapunov_spectrum(step, torch.zeros(4, dtype=F64), n_steps=1, k=1)
    with pytest.raises(ConfigError, match="n_steps must be at least 1"):
        seed_method_lambda1(step, torch.zeros(2, 4, dtype=F64), 0)
    with pytest.raises(ValueError, match=r"tangents must have shape \(2, 2, 4\)"):
        lyapunov_log_r(step, torch.zeros(2, 4, dtype=F64), n_steps=1, k=2, tangents=torch.zeros(2, 3, 4, dtype=F64))
    with pytest.raises(ValueError, match="step changed the state shape"):
        lyapunov_log_r(lambda z: z[:, :2], torch.zeros(2, 4, dtype=F64), n_steps=1, k=2)


# ---------------------------------------------------------------- propagation


@pytest.mark.parametrize("name", sorted(systems.SYSTEMS))
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (F32, 1e-4)])
def test_jvp_propagation_matches_analytic_jacobian(device, name, dtype, tol):
    """Test hypothesis: pushing k tangents with vmap(jvp) equals J(z) @ v with the analytic
    Jacobian of every reference system, and the primal equals step(z). Tolerance: round-off
    relative to |J v| (float32: ~1e-6 relative, Lorenz's RK4 chain has |J v| ~ 1)."""
    system = systems.SYSTEMS[name]()
    z = system.sample(5, gen("cpu"), dtype).to(device)
    frame = torch.randn(5, system.dim, system.dim, generator=gen("cpu", 1), dtype=dtype).to(device)
    with torch.no_grad():
        new_z, pushed = push_tangents(system.step, z, frame)
    expected = torch.einsum("bij,bkj->bki", system.jacobian(z), frame)
    scale = expected.abs().max().clamp_min(1.0)
    assert torch.allclose(pushed, expected, atol=tol * float(scale), rtol=0)
    assert torch.allclose(new_z, system.step(z), atol=tol * float(new_z.abs().max().clamp_min(1.0)), rtol=0)


def test_single_tangent_path_matches_vmapped_path():
    """Test hypothesis: k = 1 (plain jvp, a norm instead of QR) gives the same first column of
    log|R_ii| as k = 2 (vmap, QR) started from the same first tangent: Gram-Schmidt never changes
    the first column. Tolerance: round-off."""
    system = systems.henon()
    z0 = start(system, 8, F64, "cpu", settle=100)
    frame = torch.randn(8, 2, 2, generator=gen(), dtype=F64)
    one = lyapunov_log_r(system.step, z0, n_steps=200, k=1, tangents=frame[:, :1])
    two = lyapunov_log_r(system.step, z0, n_steps=200, k=2, tangents=frame)
    assert torch.allclose(one.log_r[..., 0], two.log_r[..., 0], atol=1e-12, rtol=0)


def test_seed_method_agrees_with_qr_lambda1():
    """Test hypothesis: the notebook's method (autograd.functional.jvp, renormalised each step)
    is the k = 1 case of the QR method; with the same generator seed both start from the same
    tangent, so on a fixed map (Henon, 300 steps) lambda_1 agrees within 1e-4 (in practice to
    round-off, ~1e-15)."""
    system = systems.henon()
    z0 = start(system, 8, F64, "cpu", settle=200)
    seed = seed_method_lambda1(system.step, z0, 300, gen())
    qr = lyapunov_spectrum(system.step, z0, n_steps=300, k=1, generator=gen())[:, 0]
    assert seed.shape == (8,)
    assert torch.allclose(seed, qr, atol=1e-4, rtol=0)


def test_step_with_scaled_dot_product_attention():
    """Test hypothesis: a step containing F.scaled_dot_product_attention on a (B, L, D) state works
    under the math SDPA backend (the fused CPU kernel has no forward-mode derivative), and the
    pushed tangents equal the Jacobian from reverse-mode autograd. Tolerance: float64 round-off."""
    g = gen()
    w = torch.randn(3, 8, 8, generator=g, dtype=F64) / math.sqrt(8)

    def step(z: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D), one attention head
        q, k, v = (z @ w[i] for i in range(3))
        return torch.tanh(z + F.scaled_dot_product_attention(q, k, v))

    z = torch.randn(2, 5, 8, generator=g, dtype=F64)
    frame = torch.randn(2, 3, 5, 8, generator=g, dtype=F64)
    with sdpa_kernel(SDPBackend.MATH):
        with torch.no_grad():
            _, pushed = push_tangents(step, z, frame)
        lam = lyapunov_spectrum(step, z, n_steps=5, k=3, generator=g)
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda x: step(x.unsqueeze(0))[0], z[b]).reshape(40, 40)
        assert torch.allclose(pushed[b].reshape(3, 40), frame[b].reshape(3, 40) @ jac.T, atol=1e-12)
    assert lam.shape == (2, 3) and torch.isfinite(lam).all()
