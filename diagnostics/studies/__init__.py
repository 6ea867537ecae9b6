"""One module per study of `python -m diagnostics study=<name>`; none imports another.

Batched studies, run by `diagnostics.driver.drive` from their hooks: `spectrum` (finite-time
Lyapunov spectra), `displacement` (late drift and settling), `extended` (failures past the
budget), `basin` (restarts from a perturbed carry). Studies with their own `run`: `stats`
(statistics over a spectrum and a displacement run) and `validate` (the estimator against known
answers). Each is registered in `diagnostics.registry.STUDIES`.
"""
