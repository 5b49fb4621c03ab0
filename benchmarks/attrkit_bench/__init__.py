"""attrkit_bench: the back end of ``attrkit bench``.

A *setting* (``settings/``) prepares a :class:`~attrkit_bench.problem.Problem`: a trained
model, fixed-order train and target loaders and retraining ground truth (``truth/``), made
from offline data (``data/``), models (``models/``) and seeded training (``training/``),
all cached on disk. ``attrkit bench SETTING`` (``runner/``) composes each method spec for
it, times ``fit`` + ``attribute``, measures peak memory (``memory``), scores every metric
and writes a JSON file, a table and plots (``report/``), beside dattri's counterparts with
``--compare dattri`` or kronfluence's EK-FAC with ``--compare kronfluence`` (``compare/``).

A *study* (``studies/``, ``attrkit bench STUDY``) runs one experiment from its spec file in
``benchmarks/specs``; the tools (``tools/``) render result files and bundle ground truth.
``attrkit bench --list`` lists the settings, studies and tools; ``cli`` dispatches them.
"""
