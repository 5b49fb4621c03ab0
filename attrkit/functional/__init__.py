"""Pure functions attrkit's components are built from; researchers may call them directly."""

from attrkit.functional.gradients import eval_mode, flat_dimension, per_example_gradients, select_parameters
from attrkit.functional.projection import (
    BLOCK_ROWS,
    SeededMatrix,
    block_generator,
    gaussian_sampler,
    rademacher_sampler,
)
from attrkit.functional.ranking import pearson_columns, spearman_columns
from attrkit.functional.scoring import normalize_rows, row_dots

__all__ = [
    "BLOCK_ROWS",
    "SeededMatrix",
    "block_generator",
    "eval_mode",
    "flat_dimension",
    "gaussian_sampler",
    "normalize_rows",
    "pearson_columns",
    "per_example_gradients",
    "rademacher_sampler",
    "row_dots",
    "select_parameters",
    "spearman_columns",
]
