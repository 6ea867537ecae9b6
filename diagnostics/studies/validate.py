"""The `validate` study: the Lyapunov estimator against known answers (analysis §7).

Every check runs `diagnostics.estimators.lyapunov` in float64 on a system from
`diagnostics.estimators.systems` and produces rows expected / estimated / error / tolerance /
PASS|FAIL. Tolerances:

- linear maps (diagonal, symmetric, shear): 1e-3 as specified; with a 100-step warmup the frame
  is aligned to round-off, so the errors are ~1e-15.
- Henon lambda_1, lambda_2: 1e-3; the batch standard error at B*T = 4.1e6 is ~2e-4 and the
  reference has 5 decimals. lambda_1 + lambda_2 = ln 0.3: 1e-10 (an identity to round-off,
  the worst example is reported).
- logistic r = 4: 1e-3; the finite-time exponent of a map conjugate to the |slope| = 2 tent map
  is ln 2 + O(1/T), so the error is ~1e-5.
- Lorenz (RK4, dt = 0.01, per unit time): lambda_1 and lambda_3 0.03, lambda_2 0.01, from the
  batch standard error (~4e-3 and ~2e-3 at B = 1024 over 10 time units each) with a 5-7 sigma
  margin and the 4-digit reference; the sum -13.667 to 1e-3 (RK4 error in log det, ~1e-4).
- sum of exponents = mean log|det J| (slogdet of the analytic Jacobian along the trajectory,
  Henon and a random tanh MLP): 1e-10, an identity per step; worst example reported.
- conjugation: |lambda_i(P f P^-1) - lambda_i(f)| on Henon, 1e-3 (two batches' statistical error
  plus a log cond(P) / T frame term, ~3e-4 together).

Runtime: ~20 s on one idle CPU core, ~35 s on a loaded one (the per-call overhead of
forward-mode AD and of batched QR on tiny matrices dominates, not arithmetic).
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from diagnostics.config import DiagnoseConfig, StudyConfig
from diagnostics.estimators import systems
from diagnostics.estimators.lyapunov import lyapunov_log_r, lyapunov_spectrum
from diagnostics.report import markdown_table, write_outputs
from runtime.dist import resolve_device
from runtime.errors import ConfigError
from runtime.logging import MetricsSink, dashboard_config, get_logger, rank0_tqdm
from runtime.manifest import build_manifest, write_manifest

log = get_logger("diagnostics.validate")
DTYPE = torch.float64
COLUMNS = ("check", "quantity", "expected", "estimated", "error", "tolerance", "status", "note")
# Rows of the known-answer table (analysis §7), in report order: the keys of `CHECKS`.
VALIDATE_CHECKS = ("diagonal", "symmetric", "shear", "henon", "logistic", "lorenz", "logdet", "conjugation")
HEADLINES = (
    ("passed", "passed", None),
    ("failed rows", "n_failed", None),
)


@dataclass
class ValidateStudyConfig(StudyConfig):
    """Known-answer validation of the Lyapunov estimator (float64, seeded by the top-level seed).

    checks: which rows of the table to compute (default: all of `VALIDATE_CHECKS`).
    """

    name: str = "validate"
    checks: list[str] = field(default_factory=lambda: list(VALIDATE_CHECKS))


@dataclass
class CheckRow:
    """One line of the table. `error` is |estimated - expected| unless a check sets it (worst
    example for identities)."""

    check: str
    quantity: str
    expected: float
    estimated: float
    tolerance: float
    error: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.error is None:
            self.error = abs(self.estimated - self.expected)

    @property
    def passed(self) -> bool:
        return math.isfinite(self.error) and self.error <= self.tolerance

    def as_dict(self) -> dict:
        return {**asdict(self), "status": "PASS" if self.passed else "FAIL"}


class _Context:
    """Device, seed and a cache of runs shared by checks (conjugation reuses the Henon run)."""

    def __init__(self, seed: int, device: torch.device):
        self.seed = seed
        self.device = device
        self.cache: dict[str, tuple[Tensor, Tensor]] = {}

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed + offset)

    def initial(self, system: systems.KnownSystem, batch: int, settle: int) -> Tensor:
        """(batch, dim) seeded initial states, after `settle` plain steps onto the attractor."""
        z0 = system.sample(batch, torch.Generator().manual_seed(self.seed), DTYPE).to(self.device)
        return system.settle(z0, settle)

    def spectrum(self, system: systems.KnownSystem, z0: Tensor, n_steps: int, warmup: int) -> Tensor:
        """(B, dim) full spectrum per unit time (per step for maps)."""
        lam = lyapunov_spectrum(system.step, z0, n_steps=n_steps, k=system.dim, warmup=warmup, generator=self.generator())
        return lam / system.dt


def _stat_rows(check: str, lam: Tensor, expected: tuple[float, ...], tolerances: tuple[float, ...]) -> list[CheckRow]:
    """Rows comparing the batch mean of each exponent (B, k) with its reference."""
    mean = lam.mean(0)
    se = lam.std(0) / math.sqrt(lam.shape[0]) if lam.shape[0] > 1 else torch.zeros_like(mean)
    return [
        CheckRow(check, f"lambda_{i + 1}", expected[i], float(mean[i]), tolerances[i], note=f"batch mean of {lam.shape[0]}, s.e. {float(se[i]):.1e}")
        for i in range(lam.shape[1])
    ]


def _linear(check: str, system: systems.KnownSystem, ctx: _Context, n_steps: int) -> list[CheckRow]:
    lam = ctx.spectrum(system, ctx.initial(system, 4, 0), n_steps, warmup=100)
    rows = _stat_rows(check, lam, system.exponents, (1e-3,) * system.dim)
    for row, worst in zip(rows, (lam - torch.tensor(system.exponents, dtype=DTYPE, device=lam.device)).abs().amax(0)):
        row.error, row.note = float(worst), f"exact after warmup; worst of {lam.shape[0]}, T={n_steps}"
    return rows


def check_diagonal(ctx: _Context) -> list[CheckRow]:
    """diag(1.5, 0.8, 0.3, 0.05), 4000 steps: log d to round-off."""
    return _linear("diagonal", systems.diagonal_map(), ctx, 4000)


def check_symmetric(ctx: _Context) -> list[CheckRow]:
    """O diag(2, -0.9, 0.5, 0.1) O^T: log|eigenvalues|."""
    return _linear("symmetric", systems.symmetric_map(), ctx, 1000)


def check_shear(ctx: _Context) -> list[CheckRow]:
    """[[1.2, 4], [0, 0.5]]: non-normal, log|eigenvalues| (the 1/T transient is removed by warmup)."""
    return _linear("shear", systems.shear_map(), ctx, 1000)


def _henon_runs(ctx: _Context) -> tuple[Tensor, Tensor]:
    """(z0 (B, 2) on the attractor, spectrum (B, 2)) of Henon, B = 2048, T = 2000, cached."""
    if "henon" not in ctx.cache:
        system = systems.henon()
        z0 = ctx.initial(system, 2048, 1000)
        ctx.cache["henon"] = (z0, ctx.spectrum(system, z0, 2000, warmup=100))
    return ctx.cache["henon"]


def check_henon(ctx: _Context) -> list[CheckRow]:
    """Henon (1.4, 0.3): (0.41922, -1.62319), sum ln 0.3 to round-off in every example."""
    system = systems.henon()
    _, lam = _henon_runs(ctx)
    rows = _stat_rows("henon", lam, system.exponents, (1e-3, 1e-3))
    sums = lam.sum(1)
    rows.append(CheckRow("henon", "lambda_1 + lambda_2", math.log(0.3), float(sums.mean()), 1e-10, error=float((sums - math.log(0.3)).abs().max()), note="= ln|det J|; worst example"))
    return rows


def check_logistic(ctx: _Context) -> list[CheckRow]:
    """Logistic r = 4: ln 2, float64, B = 1024, T = 1000."""
    system = systems.logistic()
    lam = ctx.spectrum(system, ctx.initial(system, 1024, 100), 1000, warmup=20)
    return _stat_rows("logistic", lam, system.exponents, (1e-3,))


def check_lorenz(ctx: _Context) -> list[CheckRow]:
    """Lorenz (10, 28, 8/3) by RK4 at dt = 0.01, per unit time: (0.9056, 0, -14.5723), sum -13.667."""
    system = systems.lorenz()
    lam = ctx.spectrum(system, ctx.initial(system, 1024, 2000), 1000, warmup=500)
    expected = tuple(e / system.dt for e in system.exponents)
    rows = _stat_rows("lorenz", lam, expected, (0.03, 0.01, 0.03))
    trace = -(10.0 + 1.0 + 8.0 / 3.0)
    rows.append(CheckRow("lorenz", "sum", trace, float(lam.sum(1).mean()), 1e-3, note="-(sigma+1+beta); RK4 error in log det"))
    return rows


def _sum_vs_logdet(system: systems.KnownSystem, ctx: _Context, batch: int, n_steps: int) -> CheckRow:
    """Run the estimator one step at a time (continuing the frame) and compare, per example, the
    sum of exponents with the mean of slogdet of the analytic Jacobian at the visited states."""
    z = ctx.initial(system, batch, 200)
    log_r, log_det, frame = [], [], None
    gen = ctx.generator()
    for _ in range(n_steps):
        log_det.append(torch.linalg.slogdet(system.jacobian(z)).logabsdet)  # (B,)
        res = lyapunov_log_r(system.step, z, n_steps=1, k=system.dim, generator=gen, tangents=frame, return_state=True)
        z, frame = res.state, res.tangents
        log_r.append(res.log_r[:, 0].sum(-1))  # (B,)
    lam_sum, det_mean = torch.stack(log_r, 1).mean(1), torch.stack(log_det, 1).mean(1)
    return CheckRow("logdet", f"{system.name}: sum lambda_i = mean log|det J|", float(det_mean.mean()), float(lam_sum.mean()), 1e-10, error=float((lam_sum - det_mean).abs().max()), note=f"slogdet along T={n_steps}; worst of {batch}")


def check_logdet(ctx: _Context) -> list[CheckRow]:
    """Sum of exponents = mean log|det J| on Henon and a random tanh MLP map."""
    return [_sum_vs_logdet(systems.henon(), ctx, 64, 200), _sum_vs_logdet(systems.mlp_map(), ctx, 64, 200)]


def check_conjugation(ctx: _Context) -> list[CheckRow]:
    """Spectrum of P f P^-1 equals that of f (Henon, P = [[1, 0.5], [0.3, 1.2]])."""
    p = torch.tensor([[1.0, 0.5], [0.3, 1.2]], dtype=DTYPE)
    z0, lam_f = _henon_runs(ctx)
    conj = systems.conjugate(systems.henon(), p)
    lam_g = ctx.spectrum(conj, z0 @ p.to(z0).T, 2000, warmup=100)
    return [
        CheckRow("conjugation", f"henon: lambda_{i + 1}(PfP^-1) - lambda_{i + 1}(f)", 0.0, float(lam_g[:, i].mean() - lam_f[:, i].mean()), 1e-3, note=f"cond(P) = {float(torch.linalg.cond(p)):.2f}")
        for i in range(2)
    ]


CHECKS: dict[str, Callable[[_Context], list[CheckRow]]] = {
    "diagonal": check_diagonal,
    "symmetric": check_symmetric,
    "shear": check_shear,
    "henon": check_henon,
    "logistic": check_logistic,
    "lorenz": check_lorenz,
    "logdet": check_logdet,
    "conjugation": check_conjugation,
}
assert tuple(CHECKS) == VALIDATE_CHECKS


def validate_rows(checks: list[str] | tuple[str, ...] = VALIDATE_CHECKS, *, seed: int = 0, device: str | torch.device = "cpu") -> tuple[list[CheckRow], dict[str, float]]:
    """Run the named checks; returns the rows and the seconds each check took."""
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ConfigError(f"unknown validate check {unknown[0]!r}; available: {', '.join(CHECKS)}")
    if not checks:
        raise ConfigError("study.checks is empty; name at least one of " + ", ".join(CHECKS))
    ctx = _Context(seed, torch.device(device))
    rows: list[CheckRow] = []
    seconds: dict[str, float] = {}
    for name in rank0_tqdm(checks, desc="validate", leave=False):
        start = time.perf_counter()
        rows.extend(CHECKS[name](ctx))
        seconds[name] = round(time.perf_counter() - start, 3)
    return rows, seconds


def format_report(rows: list[CheckRow], seconds: dict[str, float]) -> str:
    """report.md: a title, the verdict and the table."""
    failed = sum(not r.passed for r in rows)
    verdict = "all checks PASS" if not failed else f"{failed} of {len(rows)} checks FAIL"
    return "\n".join(
        [
            "# Lyapunov estimator: known-answer validation",
            "",
            f"{verdict}; float64; {sum(seconds.values()):.1f} s; exponents per step (maps) or per unit time (Lorenz).",
            "",
            markdown_table([r.as_dict() for r in rows], COLUMNS),
        ]
    )


def run_validate(cfg: DiagnoseConfig, out_dir: Path) -> int:
    """The `validate` study: print the table, write summary.json, report.md, metrics.jsonl and
    manifest.json to `out_dir`; returns 0 when every row passes, else 1."""
    study = cfg.study
    if not isinstance(study, ValidateStudyConfig):
        raise ConfigError(f"study {study.name!r} is not the validate study")
    device = resolve_device(cfg.device)
    rows, seconds = validate_rows(list(study.checks), seed=cfg.seed, device=device)
    report = format_report(rows, seconds)
    print(report, flush=True)
    passed = all(r.passed for r in rows)
    summary = {
        "study": "validate",
        "passed": passed,
        "n_rows": len(rows),
        "n_failed": sum(not r.passed for r in rows),
        "seed": cfg.seed,
        "device": str(device),
        "dtype": "float64",
        "seconds": seconds,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rows": [r.as_dict() for r in rows],
    }
    write_outputs(out_dir, summary, report)
    config = asdict(cfg)
    write_manifest(out_dir, build_manifest(config=config, device=device))
    with MetricsSink(out_dir, dashboard_config(cfg.wandb, "diagnose/validate"), is_main=True, config=config) as sink:
        sink.log({"diag/validate/passed": passed, "diag/validate/n_failed": summary["n_failed"]}, step=0)
        sink.log_table("diag/validate/table", summary["rows"], step=0)
    log.info("validate: %s -> %s", "PASS" if passed else "FAIL", out_dir)
    return 0 if passed else 1
