"""The model core both architectures build on: layers, the recurrent core and its latent carry,
the ACT halting wrapper, losses, initialisation, the sparse puzzle embedding, the architecture
config, the architecture registry base and checkpoint reading.

It imports nothing of `trm`, `hrm`, `puzzles`, `diagnostics` or `training` (tests/test_architecture.py
checks it); `archs.py` is where the concrete architectures are registered.
"""
