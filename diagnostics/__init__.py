"""Dynamics of recurrent inference: Lyapunov spectra, latent drift and basins of TRM/HRM runs.

Pure estimators (`lyapunov`) and known-answer systems (`systems`) take step maps on batched
tensors; the studies (`validate`, ...) are run by `python -m diagnostics study=<name>`.
"""
