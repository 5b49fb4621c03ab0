"""Ground truth by retraining, cached on disk.

``retraining`` (the engine: parallel, resumable, deterministic jobs), ``lds`` (models on
random halves), ``loo`` (leave-one-out), ``removal`` (the removal metrics' retrainings,
made on demand) and ``shipped`` (bundles of ground truth that ship with the package).
"""
