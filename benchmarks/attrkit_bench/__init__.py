"""attrkit_bench: the back end of ``attrkit bench``.

A *setting* (``settings/``) prepares a :class:`~attrkit_bench.problem.Problem`: a
trained model, fixed-order train and target loaders and retraining ground truth,
all generated reproducibly and cached on disk. The runner (``runner.py``) composes
each method spec for it, times ``fit`` + ``attribute``, measures peak memory, scores
the result with the LDS metric and writes a table and a JSON file.

Run it as ``attrkit bench mnist-lr`` (or ``mnist-mlp``) or ``attrkit bench --list``.
``attrkit bench influence`` (``influence.py``) searches the damping of every
influence-function solver and can compare them with dattri's (``dattri_compare.py``).
"""
