"""The reference systems themselves: fixed points, basins, stated exponents, batch independence."""
from __future__ import annotations

import math

import pytest
import torch

from diagnostics.estimators import systems
from diagnostics.estimators.lyapunov import lyapunov_spectrum

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(systems.SYSTEMS))
def test_steps_act_example_by_example(name):
    """Test hypothesis: every step map is batch-independent (the estimator's contract): stepping
    a batch equals stepping each example alone, bit for bit, and keeps shape and dtype."""
    system = systems.SYSTEMS[name]()
    z = system.sample(4, gen(), F64) + 0.01  # off the linear maps' fixed point 0
    out = system.step(z)
    assert out.shape == z.shape and out.dtype == F64
    singles = torch.cat([system.step(z[i : i + 1]) for i in range(4)])
    assert torch.allclose(out, singles, atol=1e-15, rtol=0)


@pytest.mark.parametrize("name", sorted(systems.SYSTEMS))
def test_analytic_jacobian_matches_autograd(name):
    """Test hypothesis: each `jacobian` equals the reverse-mode autograd Jacobian of `step`
    (independent of the forward-mode path the estimator uses). Tolerance: float64 round-off
    relative to the entries (Lorenz RK4 entries are O(1))."""
    system = systems.SYSTEMS[name]()
    z = system.sample(3, gen(), F64) + 0.01
    for b in range(3):
        auto = torch.autograd.functional.jacobian(lambda x: system.step(x.unsqueeze(0))[0], z[b])
        assert torch.allclose(system.jacobian(z)[b], auto, atol=1e-12, rtol=1e-12)


def test_tanh_map_two_attractors_basin_boundary_at_zero():
    """Test hypothesis: x -> tanh(2x) sends every x0 > 0 to x* = 0.957504 (root of x = tanh 2x)
    and every x0 < 0 to -x*, 0 stays at 0; the exponent at the attractors is log(2 (1 - x*^2))
    and the estimator reproduces it after warmup. Tolerance: the orbit converges geometrically
    (rate 0.33), so 1e-10 after 200 steps; exponent 1e-9."""
    system = systems.tanh_map(2.0)
    x_star = systems.tanh_fixed_point(2.0)
    assert x_star == pytest.approx(0.957504, abs=1e-6)
    assert abs(math.tanh(2 * x_star) - x_star) < 1e-15
    x0 = torch.tensor([[-3.0], [-1e-3], [0.0], [1e-3], [0.5]], dtype=F64)
    final = system.settle(x0, 200)[:, 0]
    assert torch.allclose(final, torch.tensor([-x_star, -x_star, 0.0, x_star, x_star], dtype=F64), atol=1e-10)
    lam = lyapunov_spectrum(system.step, x0[[0, 4]], n_steps=200, k=1, warmup=200, generator=gen())
    assert torch.allclose(lam, torch.full((2, 1), system.exponents[0], dtype=F64), atol=1e-9)
    assert system.exponents[0] == pytest.approx(math.log(2 * (1 - x_star**2)))
    assert system.fixed_points == ((x_star,), (-x_star,))


def test_double_well_basins_and_exponents():
    """Test hypothesis: the Euler gradient flow of (x^2-1)^2/4 + y^2/2 (dt = 0.1) takes x0 > 0 to
    (1, 0) and x0 < 0 to (-1, 0); at the attractors the exponents are (log 0.9, log 0.8).
    Tolerance: geometric convergence at rate 0.9 over 600 steps (0.9^600 ~ 1e-28)."""
    system = systems.double_well(0.1)
    z0 = torch.tensor([[0.2, 3.0], [-0.05, -1.0], [2.0, 0.5]], dtype=F64)
    final = system.settle(z0, 600)
    assert torch.allclose(final, torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]], dtype=F64), atol=1e-12)
    lam = lyapunov_spectrum(system.step, z0, n_steps=300, k=2, warmup=300, generator=gen())
    assert torch.allclose(lam, torch.tensor([math.log(0.9), math.log(0.8)], dtype=F64).expand(3, 2), atol=1e-9)


def test_contraction_converges_to_its_fixed_point():
    """Test hypothesis: z -> z* + 0.5 tanh(z - z*) converges to z* from far away, with
    displacement ratio -> 0.5 per step, and exponents log 0.5. Tolerance: round-off after 100
    steps (0.5^100); the ratio is checked once the orbit is in the linear regime."""
    system = systems.contraction()
    z0 = system.sample(4, gen(), F64) * 3
    centre = torch.tensor(system.fixed_points[0], dtype=F64)
    assert torch.allclose(system.settle(z0, 100), centre.expand(4, 3), atol=1e-14)
    z20 = system.settle(z0, 20)
    ratio = (system.step(z20) - centre).norm(dim=1) / (z20 - centre).norm(dim=1)
    assert torch.allclose(ratio, torch.full((4,), 0.5, dtype=F64), atol=1e-6)
    lam = lyapunov_spectrum(system.step, z0, n_steps=100, k=3, warmup=100, generator=gen())
    assert torch.allclose(lam, torch.full((4, 3), math.log(0.5), dtype=F64), atol=1e-12)


def test_logistic_orbits_stay_inside_the_unit_interval():
    """Test hypothesis: float64 orbits from (0.1, 0.7) stay in (0, 1) and do not collapse to the
    fixed points 0 or 3/4 over 5000 steps (the known float failure of the tent map)."""
    system = systems.logistic()
    z = system.sample(256, gen(), F64)
    lows = []
    for _ in range(50):
        z = system.settle(z, 100)
        lows.append(float((z - 0.75).abs().min()))
        assert ((z > 0) & (z < 1)).all()
    assert min(lows) > 0.0  # no orbit sits on the fixed point 3/4
    assert z.std() > 0.2  # still spread over the interval


def test_linear_reference_exponents_and_zero_start():
    """Test hypothesis: linear systems store log|eigenvalues| sorted descending and start at the
    fixed point 0 (where an expanding map cannot overflow)."""
    assert systems.diagonal_map().exponents == pytest.approx(tuple(math.log(d) for d in (1.5, 0.8, 0.3, 0.05)))
    assert systems.symmetric_map().exponents == pytest.approx(tuple(math.log(abs(e)) for e in (2.0, -0.9, 0.5, 0.1)))
    assert systems.shear_map().exponents == pytest.approx((math.log(1.2), math.log(0.5)))
    assert torch.equal(systems.shear_map().sample(3, gen(), F64), torch.zeros(3, 2, dtype=F64))


def test_reference_values_of_chaotic_systems():
    """The stored references: Henon (0.41922, -1.62319) per step; Lorenz per step = per unit time
    (0.9056, 0, -14.5723) times dt; other parameters have no reference."""
    assert systems.henon().exponents == (0.41922, -1.62319)
    assert systems.henon(1.2, 0.3).exponents == ()
    lorenz = systems.lorenz(dt=0.02)
    assert tuple(e / lorenz.dt for e in lorenz.exponents) == pytest.approx((0.9056, 0.0, -14.5723))
    assert systems.logistic().exponents == (math.log(2.0),)


def test_conjugate_system_maps_states_and_fixed_points():
    """Test hypothesis: g = P f P^-1 satisfies g(P z) = P f(z), and fixed points map by P."""
    p = torch.tensor([[2.0, 1.0], [0.0, 1.0]], dtype=F64)
    f = systems.double_well()
    g = systems.conjugate(f, p)
    z = f.sample(5, gen(), F64)
    assert torch.allclose(g.step(z @ p.T), f.step(z) @ p.T, atol=1e-14)
    assert g.fixed_points == ((2.0, 0.0), (-2.0, 0.0))
    assert g.exponents == f.exponents and g.name == "double_well_conjugated"


def test_tanh_map_rejects_gain_at_most_one():
    with pytest.raises(ValueError, match="needs gain > 1"):
        systems.tanh_map(1.0)
