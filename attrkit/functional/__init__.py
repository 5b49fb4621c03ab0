"""Pure functions attrkit's components are built from; researchers may call them directly.

Per-example, factored, last-layer and group gradients; HVPs and Lanczos; seeded dense and
sparse projections; rank correlations. Shapes and units are in each function's docstring.
"""

from attrkit.functional.curvature import (
    dataset_gnvp,
    dataset_hvp,
    gnvp,
    hvp,
    lanczos,
)
from attrkit.functional.factored import (
    FactorPlan,
    FactoredGradients,
    FactorisationError,
    LayerFactors,
    factored_gradients,
    plan_factors,
)
from attrkit.functional.gradients import (
    BoundLoss,
    eval_mode,
    flat_dimension,
    per_example_gradients,
    select_parameters,
)
from attrkit.functional.group_gradients import (
    group_gradients,
    group_rows,
)
from attrkit.functional.last_layer import (
    last_layer_features,
    last_layer_gradients,
    resolve_linear_layer,
)
from attrkit.functional.projection import (
    BLOCK_ROWS,
    SeededMatrix,
    block_generator,
    gaussian_sampler,
    rademacher_sampler,
)
from attrkit.functional.ranking import (
    pearson_columns,
    spearman_columns,
)
from attrkit.functional.scoring import (
    normalize_rows,
    row_dots,
)
from attrkit.functional.sparse import (
    sjlt_hashes,
    sjlt_matrix,
    sjlt_project,
)

__all__ = [
    "BLOCK_ROWS",
    "BoundLoss",
    "FactorPlan",
    "FactoredGradients",
    "FactorisationError",
    "LayerFactors",
    "SeededMatrix",
    "block_generator",
    "dataset_gnvp",
    "dataset_hvp",
    "eval_mode",
    "factored_gradients",
    "flat_dimension",
    "gaussian_sampler",
    "gnvp",
    "group_gradients",
    "group_rows",
    "hvp",
    "lanczos",
    "last_layer_features",
    "last_layer_gradients",
    "normalize_rows",
    "pearson_columns",
    "per_example_gradients",
    "plan_factors",
    "rademacher_sampler",
    "resolve_linear_layer",
    "row_dots",
    "select_parameters",
    "sjlt_hashes",
    "sjlt_matrix",
    "sjlt_project",
    "spearman_columns",
]
