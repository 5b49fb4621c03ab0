"""A test kit for plugin authors: toy problems, conformance checks and hypothesis strategies.

Opt-in (no pytest or hypothesis entry point)::

    from attrkit.testing import check_component, toy_problem
    check_component(registry.get("projector", "my-projector"))

``attrkit.testing.strategies`` needs ``hypothesis`` (the ``test`` extra).
"""

from attrkit.testing.conformance import check_component
from attrkit.testing.toy import ToyProblem, autograd_gradients, toy_problem

__all__ = ["ToyProblem", "autograd_gradients", "check_component", "toy_problem"]
