"""Known-answer dynamical systems as batched step maps, for validating the Lyapunov estimator and
the displacement/basin studies.

Every system is a `KnownSystem`: a step map (B, dim) -> (B, dim) acting example by example, its
analytic Jacobian (B, dim, dim), reference exponents per step (natural log, descending), a
sampler of initial states and, for maps with attractors, their fixed points. Flows are RK4 maps
with step `dt`; their exponents per unit time are `exponents / dt`.

| constructor      | reference exponents (per step)                    | source                      |
|------------------|---------------------------------------------------|-----------------------------|
| `diagonal_map`   | log|d_i|, d = (1.5, 0.8, 0.3, 0.05)                | exact                       |
| `symmetric_map`  | log|eigenvalues|                                  | exact (normal matrix)       |
| `shear_map`      | log|eigenvalues|, reached with an O(1/T) transient | exact (non-normal)          |
| `henon`          | (0.41922, -1.62319), sum = ln b exactly            | Sprott (2003), det J = -b   |
| `logistic`       | ln 2 (r = 4)                                      | exact (conjugate to tent)   |
| `lorenz`         | (0.9056, 0, -14.5723) * dt, sum = -(s+1+b) * dt    | Sprott (2003); trace of Df  |
| `contraction`    | log c per coordinate at the fixed point           | exact                       |
| `tanh_map`       | log(g (1 - x*^2)) at x = +-x*, basin boundary 0   | exact                       |
| `double_well`    | (log(1 - dt), log(1 - 2 dt)) at (+-1, 0)           | exact                       |
| `mlp_map`        | none (random tanh MLP, for invariants only)       | -                           |

Step maps use `torch.ops.aten.{mul,add}.Scalar` for products and sums with Python constants:
under forward-mode AD in torch 2.13 the Tensor-overload (`x * 1.4`) of an op whose other operand
has no tangent goes through a slow zero-tangent path (~0.5 ms per op on CPU), which would make
the known-answer study several times slower. The Scalar overloads have no tangent for the
constant and stay fast; the arithmetic is identical.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

StepFn = Callable[[Tensor], Tensor]
Sampler = Callable[[int, "torch.Generator | None", torch.dtype], Tensor]

_mul = torch.ops.aten.mul.Scalar  # x * c, c a Python float (see module docstring)
_add = torch.ops.aten.add.Scalar  # x + c


@dataclass(frozen=True)
class KnownSystem:
    """A batched step map with known dynamics.

    step: (B, dim) -> (B, dim), example by example, in the input's dtype and device.
    jacobian: (B, dim) -> (B, dim, dim), the analytic Df at each state (row = output coordinate).
    exponents: reference Lyapunov exponents per step, descending (empty when none is known).
    sample(batch, generator, dtype): (batch, dim) initial states on CPU, inside the basin of the
        attractor the reference refers to; run `settle` (or estimator warmup) before measuring.
    dt: time units per step (1 for maps); exponents per unit time are exponents / dt.
    fixed_points: attracting fixed points (one tuple of dim floats each), for basin tests.
    """

    name: str
    dim: int
    step: StepFn
    jacobian: Callable[[Tensor], Tensor]
    exponents: tuple[float, ...]
    sample: Sampler
    dt: float = 1.0
    fixed_points: tuple[tuple[float, ...], ...] = ()
    source: str = ""

    def settle(self, z: Tensor, n_steps: int) -> Tensor:
        """Plain rollout of n_steps steps (no tangents), to move states onto the attractor."""
        with torch.no_grad():
            for _ in range(n_steps):
                z = self.step(z)
        return z


def _zeros(dim: int) -> Sampler:
    """Sampler of zero states (batch, dim): the fixed point of a linear map, where the state stays
    finite however the tangents grow."""

    def sample(batch: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch, dim, dtype=dtype)

    return sample


def _gaussian(dim: int, scale: float = 1.0, centre: tuple[float, ...] | None = None) -> Sampler:
    """Sampler of centre + scale * N(0, I) states (batch, dim)."""

    def sample(batch: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
        z = torch.randn(batch, dim, generator=generator, dtype=dtype) * scale
        return z if centre is None else z + torch.tensor(centre, dtype=dtype)

    return sample


def _uniform(low: float, high: float, dim: int) -> Sampler:
    """Sampler of Uniform(low, high)^dim states (batch, dim)."""

    def sample(batch: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
        return low + (high - low) * torch.rand(batch, dim, generator=generator, dtype=dtype)

    return sample


def linear_map(matrix: Tensor, name: str = "linear", source: str = "exact") -> KnownSystem:
    """z -> A z for a fixed square A (dim, dim); exponents log|eigenvalues(A)| (any A, with
    multiplicity). Non-normal A reaches them with an O(1/T) transient. States start at the fixed
    point 0 (an expanding A would overflow any other orbit; the Jacobian is A everywhere)."""
    a = matrix.detach().to(torch.float64).clone()
    eig = torch.linalg.eigvals(a).abs().log().sort(descending=True).values
    dim = a.shape[0]

    def step(z: Tensor) -> Tensor:
        return z @ a.to(z).T

    def jacobian(z: Tensor) -> Tensor:
        return a.to(z).expand(z.shape[0], dim, dim)

    return KnownSystem(name, dim, step, jacobian, tuple(eig.tolist()), _zeros(dim), source=source)


def diagonal_map(d: tuple[float, ...] = (1.5, 0.8, 0.3, 0.05)) -> KnownSystem:
    """z -> diag(d) z: exponents log|d_i|, reached to round-off once the frame is aligned."""
    return linear_map(torch.diag(torch.tensor(d, dtype=torch.float64)), "diagonal")


def random_orthogonal(dim: int, seed: int) -> Tensor:
    """A Haar-random orthogonal (dim, dim) float64 matrix from a seeded QR."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return q * r.diagonal().sign()


def symmetric_map(eigenvalues: tuple[float, ...] = (2.0, -0.9, 0.5, 0.1), seed: int = 0) -> KnownSystem:
    """z -> O diag(e) O^T z with a random orthogonal O: exponents log|e_i| (normal matrix)."""
    o = random_orthogonal(len(eigenvalues), seed)
    return linear_map(o @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ o.T, "symmetric")


def shear_map(eigenvalues: tuple[float, float] = (1.2, 0.5), shear: float = 4.0) -> KnownSystem:
    """z -> [[e1, shear], [0, e2]] z: non-normal, exponents log|e_i|; the initial frame's
    misalignment leaves an error c/T that no warmup-free estimate avoids."""
    e1, e2 = eigenvalues
    return linear_map(torch.tensor([[e1, shear], [0.0, e2]], dtype=torch.float64), "shear")


def henon(a: float = 1.4, b: float = 0.3) -> KnownSystem:
    """Henon map (x, y) -> (1 - a x^2 + y, b x). det J = -b everywhere, so lambda_1 + lambda_2 =
    ln|b| exactly; the reference (0.41922, -1.62319) is for a = 1.4, b = 0.3 (Sprott 2003)."""

    def step(z: Tensor) -> Tensor:
        x, y = z.unbind(-1)
        return torch.stack((_add(y - _mul(x * x, a), 1.0), _mul(x, b)), dim=-1)

    def jacobian(z: Tensor) -> Tensor:
        x = z[:, 0]
        j = torch.zeros(z.shape[0], 2, 2, dtype=z.dtype, device=z.device)
        j[:, 0, 0] = -2.0 * a * x
        j[:, 0, 1] = 1.0
        j[:, 1, 0] = b
        return j

    exps = (0.41922, -1.62319) if (a, b) == (1.4, 0.3) else ()
    return KnownSystem("henon", 2, step, jacobian, exps, _uniform(-0.1, 0.1, 2), source="Sprott (2003), Chaos and Time-Series Analysis")


def logistic() -> KnownSystem:
    """Logistic map x -> 4 x (1 - x) on (0, 1): lambda = ln 2 (conjugate to the tent map).

    Run it in float64 and start in (0.1, 0.7), away from the fixed points 0 and 3/4; the orbit
    only dies (to 0) if it lands exactly on 0.5, which a random float64 start does not."""

    def step(z: Tensor) -> Tensor:
        return _mul(z * torch.rsub(z, 1.0), 4.0)

    def jacobian(z: Tensor) -> Tensor:
        return (4.0 - 8.0 * z).unsqueeze(-1)

    return KnownSystem("logistic", 1, step, jacobian, (math.log(2.0),), _uniform(0.1, 0.7, 1), source="exact")


def lorenz(sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0, dt: float = 0.01) -> KnownSystem:
    """Lorenz flow integrated by one classical RK4 step of size dt per map step.

    Reference exponents per unit time (0.9056, 0, -14.5723) for (10, 28, 8/3) (Sprott 2003);
    their sum is the constant trace -(sigma + 1 + beta) = -13.667. Stored per step (times dt).
    The RK4 map's own exponents differ from the flow's by O(dt^4) (integrator error).
    """

    def field_(s: Tensor) -> Tensor:
        x, y, z = s.unbind(-1)
        return torch.stack((_mul(y - x, sigma), x * torch.rsub(z, rho) - y, x * y - _mul(z, beta)), dim=-1)

    def step(s: Tensor) -> Tensor:
        # torch.add(a, b, alpha=c) is a + c b in one op (fewer ops = less AD dispatch overhead).
        k1 = field_(s)
        k2 = field_(torch.add(s, k1, alpha=dt / 2))
        k3 = field_(torch.add(s, k2, alpha=dt / 2))
        k4 = field_(torch.add(s, k3, alpha=dt))
        return torch.add(s, torch.add(k1 + k4, k2 + k3, alpha=2.0), alpha=dt / 6)

    def field_jacobian(s: Tensor) -> Tensor:
        x, y, z = s[:, 0], s[:, 1], s[:, 2]
        j = torch.zeros(s.shape[0], 3, 3, dtype=s.dtype, device=s.device)
        j[:, 0, 0], j[:, 0, 1] = -sigma, sigma
        j[:, 1, 0], j[:, 1, 1], j[:, 1, 2] = rho - z, -1.0, -x
        j[:, 2, 0], j[:, 2, 1], j[:, 2, 2] = y, x, -beta
        return j

    def jacobian(s: Tensor) -> Tensor:
        # Chain rule through the four stages: K_i = Df(stage_i) d(stage_i)/ds.
        eye = torch.eye(3, dtype=s.dtype, device=s.device).expand(s.shape[0], 3, 3)
        k1 = field_(s)
        big_k1 = field_jacobian(s)
        s2 = s + dt / 2 * k1
        k2, big_k2 = field_(s2), field_jacobian(s2) @ (eye + dt / 2 * big_k1)
        s3 = s + dt / 2 * k2
        k3, big_k3 = field_(s3), field_jacobian(s3) @ (eye + dt / 2 * big_k2)
        big_k4 = field_jacobian(s + dt * k3) @ (eye + dt * big_k3)
        return eye + dt / 6 * (big_k1 + 2 * big_k2 + 2 * big_k3 + big_k4)

    exps = tuple(e * dt for e in (0.9056, 0.0, -14.5723)) if (sigma, rho, beta) == (10.0, 28.0, 8.0 / 3.0) else ()
    return KnownSystem("lorenz", 3, step, jacobian, exps, _gaussian(3, 5.0, (0.0, 0.0, 25.0)), dt=dt, source="Sprott (2003); sum = trace of Df")


def contraction(centre: tuple[float, ...] = (1.0, -2.0, 0.5), rate: float = 0.5) -> KnownSystem:
    """z -> z* + c tanh(z - z*) with 0 < c < 1: every orbit converges to the fixed point z*
    (|Df| <= c); exponents log c per coordinate at z*. Displacement decays like c^t."""
    dim = len(centre)
    fixed = torch.tensor(centre, dtype=torch.float64)

    def step(z: Tensor) -> Tensor:
        c = fixed.to(z)
        return c + _mul(torch.tanh(z - c), rate)

    def jacobian(z: Tensor) -> Tensor:
        sech2 = 1.0 - torch.tanh(z - fixed.to(z)) ** 2
        return torch.diag_embed(rate * sech2)

    return KnownSystem("contraction", dim, step, jacobian, (math.log(rate),) * dim, _gaussian(dim, 2.0, centre), fixed_points=(tuple(centre),), source="exact")


def tanh_fixed_point(gain: float) -> float:
    """The positive root x* of x = tanh(gain x) for gain > 1 (Newton from x = 1)."""
    x = 1.0
    for _ in range(50):
        t = math.tanh(gain * x)
        x -= (x - t) / (1.0 - gain * (1.0 - t * t))
    return x


def tanh_map(gain: float = 2.0) -> KnownSystem:
    """x -> tanh(gain x), gain > 1: attractors +-x*, the repelling fixed point 0 is the basin
    boundary (basin = sign of x0); exponent log(gain (1 - x*^2)) at the attractors."""
    if gain <= 1.0:
        raise ValueError(f"tanh_map needs gain > 1 for two attractors, got {gain}")
    x_star = tanh_fixed_point(gain)

    def step(z: Tensor) -> Tensor:
        return torch.tanh(_mul(z, gain))

    def jacobian(z: Tensor) -> Tensor:
        return (gain * (1.0 - torch.tanh(gain * z) ** 2)).unsqueeze(-1)

    exps = (math.log(gain * (1.0 - x_star**2)),)
    return KnownSystem("tanh", 1, step, jacobian, exps, _gaussian(1), fixed_points=((x_star,), (-x_star,)), source="exact")


def double_well(dt: float = 0.1) -> KnownSystem:
    """Euler step of the gradient flow of V(x, y) = (x^2 - 1)^2 / 4 + y^2 / 2:
    (x, y) -> (x + dt (x - x^3), (1 - dt) y). Attractors (+-1, 0), basin boundary x = 0;
    exponents (log(1 - dt), log(1 - 2 dt)) at the attractors (dt < 0.5)."""

    def step(z: Tensor) -> Tensor:
        x, y = z.unbind(-1)
        return torch.stack((torch.add(x, x - x * x * x, alpha=dt), _mul(y, 1.0 - dt)), dim=-1)

    def jacobian(z: Tensor) -> Tensor:
        x = z[:, 0]
        j = torch.zeros(z.shape[0], 2, 2, dtype=z.dtype, device=z.device)
        j[:, 0, 0] = 1.0 + dt * (1.0 - 3.0 * x * x)
        j[:, 1, 1] = 1.0 - dt
        return j

    exps = (math.log(1.0 - dt), math.log(1.0 - 2.0 * dt))
    return KnownSystem("double_well", 2, step, jacobian, exps, _gaussian(2), fixed_points=((1.0, 0.0), (-1.0, 0.0)), source="exact")


def mlp_map(dim: int = 6, hidden: int = 12, gain: float = 2.0, seed: int = 0) -> KnownSystem:
    """Random tanh MLP z -> W2 tanh(W1 z + b) with W ~ gain N(0, 1/fan_in): no known spectrum;
    used for invariants that hold for any map (sum of exponents = mean log|det J|, conjugation)."""
    g = torch.Generator().manual_seed(seed)
    w1 = gain * torch.randn(hidden, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    b1 = 0.1 * torch.randn(hidden, generator=g, dtype=torch.float64)
    w2 = gain * torch.randn(dim, hidden, generator=g, dtype=torch.float64) / math.sqrt(hidden)

    def step(z: Tensor) -> Tensor:
        return torch.tanh(z @ w1.to(z).T + b1.to(z)) @ w2.to(z).T

    def jacobian(z: Tensor) -> Tensor:
        sech2 = 1.0 - torch.tanh(z @ w1.to(z).T + b1.to(z)) ** 2  # (B, hidden)
        return w2.to(z) @ (sech2.unsqueeze(-1) * w1.to(z))  # (B, dim, dim)

    return KnownSystem("mlp", dim, step, jacobian, (), _gaussian(dim), source="-")


def conjugate(system: KnownSystem, p: Tensor) -> KnownSystem:
    """P f P^-1 for an invertible (dim, dim) P: the same exponents as f (a change of
    coordinates); initial states are P times the original ones."""
    p64 = p.detach().to(torch.float64).clone()
    p_inv = torch.linalg.inv(p64)

    def step(w: Tensor) -> Tensor:
        return system.step(w @ p_inv.to(w).T) @ p64.to(w).T

    def jacobian(w: Tensor) -> Tensor:
        return p64.to(w) @ system.jacobian(w @ p_inv.to(w).T) @ p_inv.to(w)

    def sample(batch: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
        return system.sample(batch, generator, dtype) @ p64.to(dtype).T

    fixed = tuple(tuple((p64 @ torch.tensor(f, dtype=torch.float64)).tolist()) for f in system.fixed_points)
    return KnownSystem(f"{system.name}_conjugated", system.dim, step, jacobian, system.exponents, sample, system.dt, fixed, system.source)


SYSTEMS: dict[str, Callable[[], KnownSystem]] = {
    "diagonal": diagonal_map,
    "symmetric": symmetric_map,
    "shear": shear_map,
    "henon": henon,
    "logistic": logistic,
    "lorenz": lorenz,
    "contraction": contraction,
    "tanh": tanh_map,
    "double_well": double_well,
    "mlp": mlp_map,
}
