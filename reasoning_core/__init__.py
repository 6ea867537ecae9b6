"""Building blocks shared by the TRM and HRM model packages.

Layers, the sparse puzzle embedding, the ACT wrapper and its carry, the loss head, optimizers,
checkpoint I/O and device/distributed helpers. Nothing here imports `trm` or `hrm`; importing the
package itself is cheap (submodules are imported explicitly).
"""
