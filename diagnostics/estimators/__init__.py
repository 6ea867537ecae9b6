"""Estimators that know nothing of models: they take step maps `f(z) -> z'` on batched tensors
(B, *state) or per-example numpy arrays, so they can be checked on systems with known answers.

- `lyapunov`: finite-time Lyapunov spectra by Benettin's QR method with forward-mode JVPs.
- `systems`: reference maps and flows with known spectra (linear, Henon, logistic, Lorenz, ...).
- `statistics`: Mann-Whitney AUC, seeded bootstrap CIs, Otsu's threshold, survival and escape
  rate, effect sizes and cross-validated logistic regression.

Nothing here imports model code (`model_core`, `trm`, `hrm`, `training`, `puzzles`).
"""
