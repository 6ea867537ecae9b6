"""Training and evaluation of TRM/HRM checkpoints: the loop behind pretrain.py, its typed config and
resumable state, the optimizers, schedule, EMA, trajectory augmentation, fixed-budget evaluation
(the library behind evaluate.py) and export to the official layout.

Data flows config -> puzzles (data) -> model_core (model) -> this package -> checkpoints.
"""
