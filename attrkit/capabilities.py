"""Capability names that components declare in ``requires`` / ``provides``.

The composer branches on these, never on component names: a spec composes only
when every capability some part requires is provided by another part.
"""

__all__ = ["FACTORED", "GROUP", "HVP", "LAST_LAYER", "PER_EXAMPLE", "STRUCTURED"]

#: Per-example gradient vectors ``Tensor[b, p]`` of the loss and the target.
PER_EXAMPLE = "per-example-gradients"
#: Hessian-vector products of the training loss in parameter space.
HVP = "hvp"
#: Penultimate features and logit gradients of the last layer.
LAST_LAYER = "last-layer"
#: Per-layer inputs and output gradients (for Kronecker methods).
FACTORED = "factored"
#: One gradient per group of training examples (gradient of the group's summed loss).
GROUP = "group-gradients"
#: Per-layer factors of the same per-example gradients on request (``factors``), so the engine can
#: take their inner products without forming them (:mod:`attrkit.functional.structured_products`).
STRUCTURED = "structured-products"
