"""attrkit-diagonal-solver: the parameter-space solver ``diagonal-fisher``.

The maths is in :func:`fisher_diagonal` and :func:`diagonal_solve`; the component is
:class:`DiagonalFisherSolver`, registered through the ``attrkit`` entry-point group.
"""

from attrkit_diagonal_solver.diagonal_fisher import (
    DiagonalFisherConfig,
    DiagonalFisherSolver,
    diagonal_solve,
    fisher_diagonal,
)

__all__ = ["DiagonalFisherConfig", "DiagonalFisherSolver", "diagonal_solve", "fisher_diagonal"]
