"""How the benchmark trains models, seeded and deterministic.

``sgd`` (the classifiers' minibatch SGD, trajectories), ``adamw`` (the sequence models'
AdamW) and ``members`` (ensemble members: independent models, trajectory checkpoints,
LoRA adapters, cached with their cost).
"""
