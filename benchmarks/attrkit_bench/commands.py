"""The commands of ``attrkit bench`` besides the settings: the studies and the tools.

A *study* is a fixed experiment over one or more settings (or a synthetic problem), read
from its spec file ``benchmarks/specs/{name}.json`` (``--spec FILE`` for another); it
writes its result JSON, and where it has one its markdown page or plot, through
:mod:`attrkit_bench.report`. A *tool* works on what the benchmark made: result files, the
ground-truth cache. Each command is a module with ``add_arguments(parser)`` and
``run(args) -> exit status``, imported only when the command runs.
"""

from __future__ import annotations

import attrs

__all__ = ["STUDIES", "TOOLS", "Command"]


@attrs.frozen(kw_only=True)
class Command:
    """One ``attrkit bench NAME`` command other than a setting.

    Attributes:
        name: what ``attrkit bench`` takes.
        description: one line for ``attrkit bench --list`` and the command's ``--help``.
        module: the module with its ``add_arguments(parser)`` and ``run(args)``.
    """

    name: str
    description: str
    module: str


#: The studies, by name; each reads ``benchmarks/specs/{name}.json``.
STUDIES: dict[str, Command] = {c.name: c for c in (
    Command(name="influence", module="attrkit_bench.studies.influence",
            description="every influence-function solver on mnist-lr and mnist-mlp, λ searched, optionally "
            "beside dattri (INFLUENCE.md)"),
    Command(name="ensembles", module="attrkit_bench.studies.ensembles",
            description="TRAK over independent, dropout and LoRA members, TracInCP, Grad-Dot/Cos and RPS, "
            "optionally beside dattri (ENSEMBLES.md)"),
    Command(name="ggda", module="attrkit_bench.studies.ggda",
            description="group attribution: runtime vs retraining score across group sizes and groupers (GGDA.md)"),
    Command(name="scaling", module="attrkit_bench.studies.scaling",
            description="distributed scaling: the same specs on 1 and 2 gloo ranks, time and per-rank memory"),
    Command(name="out-of-core", module="attrkit_bench.studies.out_of_core",
            description="TRAK on a training set replicated to n examples, features on disk under a memory budget "
            "(OUT_OF_CORE.md)"),
    Command(name="engine", module="attrkit_bench.studies.engine",
            description="speed and memory of the gradient and projection engine on the MNIST MLP (ENGINE.md)"),
    Command(name="roofline", module="attrkit_bench.studies.roofline",
            description="each method's time as a multiple of this machine's limit for its work (GEMM rate, "
            "gradient pass rate, analytic counts)"),
    Command(name="checks", module="attrkit_bench.studies.checks",
            description="what attrkit's safety checks cost: the spec's methods on a setting, with and without them"),
)}
#: The tools, by name.
TOOLS: dict[str, Command] = {c.name: c for c in (
    Command(name="report", module="attrkit_bench.tools.report",
            description="print result JSON files of a setting or a study as markdown"),
    Command(name="ship", module="attrkit_bench.tools.ship",
            description="make a setting's ground truth (what the cache lacks) and bundle it into the package"),
)}
