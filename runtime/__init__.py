"""Run-time services every entry point needs and that know nothing of models or puzzles:
user-facing errors, atomic writes, device and torch.distributed helpers, rank-aware logging,
progress bars and the metrics/W&B sink, Hydra CLI helpers, run manifests and Hugging Face Hub
access. It imports no other package of this project.
"""
