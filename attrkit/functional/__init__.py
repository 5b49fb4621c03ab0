"""Pure functions attrkit's components are built from; researchers may call them directly.

Per-example, factored, last-layer and group gradients; seeded k-means (for groupers); HVPs, Lanczos and inverse-HVP
solvers (explicit, CG, LiSSA, Arnoldi, K-FAC, EK-FAC, DataInf); seeded dense and sparse
projections; rank correlations; fixed dropout masks and LoRA adapters for ensembles. Shapes and units are in each function's docstring.
"""

from attrkit.functional.curvature import (
    dataset_gnvp,
    dataset_hvp,
    gnvp,
    hvp,
    lanczos,
)
from attrkit.functional.datainf import (
    DataInfSolve,
    datainf_ihvp_at,
)
from attrkit.functional.dropout_masks import (
    dropout_mask,
    dropout_modules,
    fixed_dropout_masks,
)
from attrkit.functional.factored import (
    FactorPlan,
    FactorisationError,
    factored_gradients,
    plan_factors,
)
from attrkit.functional.gradient_factors import (
    FactoredGradients,
    LayerFactors,
)
from attrkit.functional.gradients import (
    BoundLoss,
    eval_mode,
    evaluate,
    flat_dimension,
    per_example_gradients,
    select_parameters,
)
from attrkit.functional.lora import (
    LORA_PATTERNS,
    LoRAConv2d,
    LoRALinear,
    add_lora,
    lora_parameter_names,
    train_lora_adapters,
)
from attrkit.functional.group_gradients import (
    group_gradients,
    group_rows,
)
from attrkit.functional.ihvp import (
    CURVATURES,
    Cost,
    CurvatureError,
    IHVPStats,
    InverseHVP,
)
from attrkit.functional.ihvp_arnoldi import arnoldi_ihvp_at
from attrkit.functional.ihvp_cg import cg_ihvp_at
from attrkit.functional.ihvp_explicit import (
    cholesky_solve_columns,
    explicit_ihvp_at,
)
from attrkit.functional.ihvp_kfac import (
    ekfac_ihvp_at,
    kfac_ihvp_at,
)
from attrkit.functional.ihvp_lissa import lissa_ihvp_at
from attrkit.functional.kfac_factors import (
    EKFACFactors,
    KFACFactors,
    KroneckerLayer,
)
from attrkit.functional.kmeans import (
    KMeansResult,
    kmeans,
    standardize,
)
from attrkit.functional.last_layer import (
    last_layer_features,
    last_layer_gradients,
    last_layer_parameters,
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
from attrkit.functional.detection import (
    detection_curve,
    group_labels,
    roc_auc,
)
from attrkit.functional.ground_truth import (
    GroundTruthError,
    MissingGroundTruthError,
    check_groups,
    require_entries,
    shape_mismatch,
)
from attrkit.functional.removal import (
    AGGREGATES,
    importance,
    importance_order,
    keep_mask,
    loo_correlation,
    top_count,
)

__all__ = [
    "cholesky_solve_columns",
    "BLOCK_ROWS",
    "BoundLoss",
    "CURVATURES",
    "Cost",
    "CurvatureError",
    "DataInfSolve",
    "EKFACFactors",
    "FactorPlan",
    "FactoredGradients",
    "FactorisationError",
    "IHVPStats",
    "InverseHVP",
    "KFACFactors",
    "KMeansResult",
    "KroneckerLayer",
    "LORA_PATTERNS",
    "LayerFactors",
    "LoRAConv2d",
    "LoRALinear",
    "SeededMatrix",
    "add_lora",
    "arnoldi_ihvp_at",
    "block_generator",
    "cg_ihvp_at",
    "datainf_ihvp_at",
    "dataset_gnvp",
    "dataset_hvp",
    "dropout_mask",
    "dropout_modules",
    "ekfac_ihvp_at",
    "eval_mode",
    "evaluate",
    "explicit_ihvp_at",
    "factored_gradients",
    "fixed_dropout_masks",
    "flat_dimension",
    "gaussian_sampler",
    "gnvp",
    "group_gradients",
    "group_rows",
    "hvp",
    "kfac_ihvp_at",
    "kmeans",
    "lanczos",
    "last_layer_features",
    "last_layer_gradients",
    "last_layer_parameters",
    "lissa_ihvp_at",
    "lora_parameter_names",
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
    "standardize",
    "train_lora_adapters",
    # evaluation: noisy-label detection, ground-truth checks, removal-based metrics
    "AGGREGATES",
    "GroundTruthError",
    "MissingGroundTruthError",
    "check_groups",
    "detection_curve",
    "group_labels",
    "importance",
    "importance_order",
    "keep_mask",
    "loo_correlation",
    "require_entries",
    "roc_auc",
    "shape_mismatch",
    "top_count",
]
