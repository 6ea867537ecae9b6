"""Known-answer tests of the covariant Lyapunov vectors (diagnostics.estimators.clv).

Each test states its hypothesis, the source of the reference and why its tolerance is what it is.
Alignment errors are 1 - |cos| between a computed CLV and its reference line (CLVs have no sign).
"""
from __future__ import annotations

import math

import pytest
import torch

from diagnostics.estimators import systems
from diagnostics.estimators.clv import (
    alignment_error,
    clv_along_orbit,
    covariant_lyapunov_vectors,
    gram_schmidt_vectors,
    line_angle,
    random_upper_triangular,
)
from runtime.errors import ConfigError

F64, F32 = torch.float64, torch.float32

# A = P diag(d) P^-1: distinct real eigenvalues (one negative), P far from orthogonal (non-normal A)
P = torch.tensor([[1.0, 0.4, -0.3, 0.2], [0.2, 1.0, 0.5, -0.4], [0.1, -0.6, 1.0, 0.3], [0.5, 0.2, -0.1, 1.0]], dtype=F64)
D = torch.tensor([2.0, -1.3, 0.7, 0.4], dtype=F64)  # sorted by |d|, so eigenvector i is CLV i


def gen(device: torch.device | str = "cpu", seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def analytic_push(system: systems.KnownSystem):
    """push(z, tangents (B, k, dim)) by the analytic Jacobian: the closed-form path, fast."""
    return lambda z, t: (system.step(z), torch.einsum("bij,bkj->bki", system.jacobian(z), t))


def eigen_map() -> tuple[systems.KnownSystem, torch.Tensor]:
    """The linear map A and its unit eigenvectors as rows (4, 4), ordered by |eigenvalue|."""
    eigvecs = (P / P.norm(dim=0)).T
    return systems.linear_map(P @ torch.diag(D) @ torch.linalg.inv(P)), eigvecs


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (F32, 1e-5)])
@pytest.mark.parametrize("k", [4, 2])
def test_linear_map_clvs_are_its_eigenvectors(device, dtype, tol, k):
    """Test hypothesis: for z -> A z with distinct real eigenvalues the CLVs are A's eigenvectors
    (up to sign) in the order of |eigenvalue| (Ginelli et al. 2007), also when only the first k < D
    are computed (CLV j lies in the span of the first j Gram-Schmidt vectors). Reference: the
    columns of P. Convergence: forward and backward transients shrink like the eigenvalue ratio
    (|0.4/0.7|, the slowest) to the power 100, ~1e-24, so only round-off is left. Tolerance:
    1 - |cos| is about theta^2 / 2 for an angle error theta; float64 round-off (observed 1e-16)
    and float32 frames with theta ~ 1e-7 (observed ~1e-13), both well inside the issue's 1e-3."""
    system, eigvecs = eigen_map()
    z0 = torch.zeros(3, 4, dtype=dtype, device=device)
    v = covariant_lyapunov_vectors(system.step, z0, k=k, n_forward=100, n_backward=100, generator=gen(device))
    assert v.shape == (3, k, 4) and v.dtype == dtype
    assert torch.allclose(v.double().norm(dim=-1), torch.ones(3, k, dtype=F64, device=device), atol=10 * torch.finfo(dtype).eps)
    err = alignment_error(v.double(), eigvecs[:k].to(device).expand(3, k, 4))
    assert err.max() <= tol


def test_closed_form_push_gives_the_same_clvs():
    """Test hypothesis: the `push` hook (closed-form tangent map, as the model adapters use) and the
    default torch.func.jvp of `step` run the same algorithm on the same draws. Reference: the
    default path. Tolerance: round-off of two ways to compute A v (1e-12)."""
    system, _ = eigen_map()
    a = P @ torch.diag(D) @ torch.linalg.inv(P)
    z0 = torch.zeros(2, 4, dtype=F64)
    by_jvp = clv_along_orbit(system.step, z0, k=3, times=(20, 40), n_backward=30, generator=gen())
    by_push = clv_along_orbit(None, z0, k=3, times=(20, 40), n_backward=30, generator=gen(), push=lambda z, t: (z @ a.T, t @ a.T))
    assert torch.allclose(by_jvp.coefficients, by_push.coefficients, atol=1e-12, rtol=0)
    assert torch.allclose(by_jvp.log_r, by_push.log_r, atol=1e-12, rtol=0)


def test_non_normal_map_clvs_differ_from_gram_schmidt_vectors():
    """Test hypothesis: on the shear [[1.2, 4], [0, 0.5]] the Gram-Schmidt frame is orthonormal,
    e1 and e2, while the CLVs are the eigenvectors e1 and (4, -0.7)/|.|, 9.926 degrees apart: the
    second CLV differs from the second Gram-Schmidt vector (|cos| = 0.7 / sqrt(16.49) = 0.1724).
    On a normal (symmetric) map both coincide with the orthogonal eigenvectors. Reference: exact
    eigenvectors. Tolerance: round-off (transients (0.5/1.2)^60 ~ 1e-23)."""
    system = systems.shear_map()
    z0 = torch.zeros(2, 2, dtype=F64)
    v = covariant_lyapunov_vectors(system.step, z0, k=2, n_forward=60, n_backward=60, generator=gen())
    q = gram_schmidt_vectors(system.step, z0, k=2, n_forward=60, generator=gen())
    eig2 = torch.tensor([4.0, -0.7], dtype=F64)
    assert alignment_error(v[:, 0], torch.tensor([1.0, 0.0], dtype=F64)).max() < 1e-12
    assert alignment_error(v[:, 1], eig2).max() < 1e-12
    assert alignment_error(q[:, 0], v[:, 0]).max() < 1e-12  # the first vectors agree
    cos_clv_gs = 1.0 - alignment_error(v[:, 1], q[:, 1])
    assert torch.allclose(cos_clv_gs, torch.full((2,), 0.7 / math.sqrt(16.49), dtype=F64), atol=1e-12, rtol=0)
    angle = clv_along_orbit(system.step, z0, k=2, times=(60,), n_backward=60, generator=gen()).angles()
    assert torch.allclose(angle, torch.full((2, 1), math.degrees(math.atan2(0.7, 4.0)), dtype=F64), atol=1e-10, rtol=0)

    sym = systems.symmetric_map()
    z0 = torch.zeros(2, 4, dtype=F64)
    v = covariant_lyapunov_vectors(sym.step, z0, k=4, n_forward=150, n_backward=150, generator=gen())
    q = gram_schmidt_vectors(sym.step, z0, k=4, n_forward=150, generator=gen())
    assert alignment_error(v, q).max() < 1e-12


def henon_saddle() -> tuple[torch.Tensor, torch.Tensor]:
    """Henon's saddle fixed point z* (2,) and the unit eigenvectors of J(z*) as rows, by |eigenvalue|."""
    a, b = 1.4, 0.3
    x = (-(1 - b) + math.sqrt((1 - b) ** 2 + 4 * a)) / (2 * a)
    mu = torch.linalg.eigvals(torch.tensor([[-2 * a * x, 1.0], [b, 0.0]], dtype=F64)).real
    mu = mu[mu.abs().argsort(descending=True)]  # (-1.924, 0.156)
    vecs = torch.stack([torch.stack((m, torch.tensor(b, dtype=F64))) for m in mu])  # (J - mu) v = 0 => v ~ (mu, b)
    return torch.tensor([x, b * x], dtype=F64), vecs / vecs.norm(dim=-1, keepdim=True)


def test_henon_saddle_fixed_point_clvs_are_eigenvectors_of_its_jacobian():
    """Test hypothesis: on an orbit sitting at a hyperbolic fixed point of a nonlinear map, the CLVs
    are the eigenvectors of the Jacobian there (the Jacobians are all the same). Henon (1.4, 0.3)
    at its saddle z* = (0.6314, 0.1894): eigenvalues -1.924 and 0.156. Reference: closed form
    (J - mu) v = 0. 15 + 15 steps: transients (0.156/1.924)^15 ~ 1e-17, while the float64
    rounding of z* grows by 1.924^30 ~ 3e8 to ~1e-8 of a displacement; tolerance 1e-6."""
    z_star, eigvecs = henon_saddle()
    v = covariant_lyapunov_vectors(systems.henon().step, z_star.expand(2, 2).clone(), k=2, n_forward=15, n_backward=15, generator=gen())
    assert alignment_error(v, eigvecs.expand(2, 2, 2)).max() < 1e-6


@pytest.mark.parametrize("name", ["henon", "mlp"])
def test_clvs_are_covariant(name):
    """Test hypothesis: J(z_t) v_j(t) is parallel to v_j(t + 1) for every j (the defining property;
    it holds for any start C_T because each backward step is exactly R^-1, so it checks the time
    indexing of the forward and backward passes). Henon and a random 6-d tanh MLP (k = D), at two
    consecutive times of one run. Reference: the analytic Jacobians of `systems`. Tolerance:
    round-off of cond(J)-scaled products (1e-10)."""
    system = systems.SYSTEMS[name]()
    z0 = system.settle(system.sample(16, gen(), F64), 200)
    result = clv_along_orbit(system.step, z0, k=system.dim, times=(15, 16), n_backward=10, generator=gen(), keep_frames=True)
    v = result.vectors()  # (B, 2, k, dim)
    pushed = torch.einsum("bij,bkj->bki", system.jacobian(system.settle(z0, 15)), v[:, 0])
    assert alignment_error(pushed, v[:, 1]).max() < 1e-10


def test_growth_along_clvs_gives_the_exponents_on_henon():
    """Test hypothesis: the average one-step log growth log|J_t v_j(t)| along the orbit is lambda_j
    for the CLVs (they are covariant and grow at their own rate), not for the Gram-Schmidt vector
    2 (its image is dominated by its component along the expanding direction). Henon (1.4, 0.3):
    (0.41922, -1.62319) (Sprott 2003). Tangents pushed by the analytic Jacobian (fast; the
    `push` path is checked against torch.func.jvp above). B = 128 orbits, 200 consecutive times each: batch standard
    error ~2.3e-3, tolerance 0.012 (5 s.e.); the Gram-Schmidt vector 2 gives about -0.09."""
    system = systems.henon()
    z = system.settle(system.sample(128, gen(), F64), 500)
    result = clv_along_orbit(None, z, k=2, times=range(30, 230), n_backward=30, push=analytic_push(system), generator=gen(), keep_frames=True)
    v = result.vectors()  # (B, 200, 2, 2)
    z = system.settle(z, 30)
    growth, gs2 = [], []
    for i in range(200):
        jac = system.jacobian(z)
        growth.append(torch.einsum("bij,bkj->bki", jac, v[:, i]).norm(dim=-1).log())  # (B, 2)
        gs2.append(torch.einsum("bij,bj->bi", jac, result.frames[:, i, 1]).norm(dim=-1).log())
        z = system.step(z)
    mean = torch.stack(growth, 1).mean((0, 1))
    assert torch.allclose(mean, torch.tensor(system.exponents, dtype=F64), atol=0.012, rtol=0)
    assert float(torch.stack(gs2).mean()) > -0.5


def test_angles_need_only_the_coefficients_and_near_tangency_is_resolved():
    """Test hypothesis: the angle between CLVs from the coefficients C (Q orthonormal) equals the
    angle between the vectors Q C; `line_angle` resolves 1e-9 rad (arccos(|cos|) would return 0 or
    ~1e-8 there) and maps opposite vectors to 0. Reference: exact. Tolerance: round-off."""
    system = systems.mlp_map()
    z0 = system.settle(system.sample(4, gen(), F64), 100)
    result = clv_along_orbit(system.step, z0, k=6, times=(20, 25), n_backward=20, generator=gen(), keep_frames=True)
    v = result.vectors()
    assert torch.allclose(result.angles(0, -1), line_angle(v[:, :, 0], v[:, :, -1]), atol=1e-9, rtol=0)
    assert ((result.angles(1, 3) >= 0) & (result.angles(1, 3) <= 90)).all()
    eps = 1e-9
    a, b = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([math.cos(eps), math.sin(eps)], dtype=F64)
    assert abs(float(line_angle(a, b)) - math.degrees(eps)) < 1e-20
    assert float(line_angle(a, -b)) == pytest.approx(math.degrees(eps), rel=1e-9)
    assert float(line_angle(a, torch.tensor([0.0, 2.0], dtype=F64))) == pytest.approx(90.0, abs=1e-12)
    c = random_upper_triangular(3, 4, gen())
    assert torch.equal(c, c.triu()) and torch.allclose(c.norm(dim=-2), torch.ones(3, 4, dtype=F64))


def test_argument_errors():
    system = systems.henon()
    z0 = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ConfigError, match="n_backward must be at least 1"):
        covariant_lyapunov_vectors(system.step, z0, k=2, n_forward=5, n_backward=0)
    with pytest.raises(ConfigError, match="times must name at least one step >= 0"):
        clv_along_orbit(system.step, z0, k=2, times=(), n_backward=3)
    with pytest.raises(ConfigError, match="times must name at least one step >= 0"):
        clv_along_orbit(system.step, z0, k=2, times=(-1, 3), n_backward=3)
    with pytest.raises(ConfigError, match="k=3 tangent vectors do not fit a state of dimension 2"):
        covariant_lyapunov_vectors(system.step, z0, k=3, n_forward=5, n_backward=5)
    with pytest.raises(ConfigError, match="needs a step map or a push function"):
        covariant_lyapunov_vectors(None, z0, k=2, n_forward=5, n_backward=5)
    with pytest.raises(ValueError, match=r"coefficients must have shape \(2, 2, 2\)"):
        clv_along_orbit(system.step, z0, k=2, times=(1,), n_backward=1, coefficients=torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="keep_frames=True"):
        clv_along_orbit(system.step, z0, k=2, times=(1,), n_backward=1).vectors()
