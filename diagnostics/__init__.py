"""Dynamics of recurrent inference: Lyapunov spectra, latent drift and basins of TRM/HRM runs.

Three layers, each importing only the ones above it:

- `diagnostics.estimators`: pure numerics on batched tensors and arrays (Benettin/QR Lyapunov
  spectra, known-answer systems, AUC / bootstrap / Otsu statistics). No model code.
- `diagnostics.adapters`: a TRM/HRM checkpoint's inference as a step map on the joint state
  (B, 2, S, D) = (z_H, z_L), its closed-form JVPs, recorded rollouts, and what several studies
  derive from them (success rules, drift, settling threshold).
- `diagnostics.studies`: one module per study (spectrum, displacement, extended, basin, stats,
  validate); a study never imports another.

Data flow of `python -m diagnostics study=<name>` (`__main__`): conf/diagnose.yaml +
conf/study/<name>.yaml -> typed `DiagnoseConfig` (`config`) -> the `Study` record in
`registry.STUDIES` -> `driver.drive`: checkpoint + seeded sample (`inputs`) -> per-batch arrays
(the study's hook) saved as resumable shards (`shards`) -> pooled results -> summary, figures,
report.md, results.npz, manifest and W&B (`report.finish_study`). `python -m diagnostics.collect`
reads the runs' summary.json back into one table (`collect`, headline columns from the registry).
"""
