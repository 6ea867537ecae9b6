"""Model-side adapters between a TRM/HRM checkpoint and the estimators.

- `step_map`: the recurrence as a step map on z = (z_H, z_L) of shape (B, 2, S, D), one
  module evaluation ("sub-update") per step; tangent pushes and the per-segment FTLE unroll.
- `fast_jvp`: closed-form JVPs of the reasoning blocks for k tangents at once.
- `trajectory`: plain rollouts with per-segment read-outs and drift, and what several studies
  derive from them: success rules, the per-example rollout record, late drift, settling
  threshold, first solving segment, givens.
"""
