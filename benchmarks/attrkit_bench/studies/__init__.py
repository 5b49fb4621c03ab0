"""The studies of ``attrkit bench STUDY`` (see :mod:`attrkit_bench.commands`), each read from its spec file.

One module (or, for ``influence``, subpackage) per study: its ``add_arguments(parser)`` and
``run(args)``. ``spec`` reads the spec files (``benchmarks/specs/{study}.json``),
``options`` holds the options studies share and ``trials`` the timed, LDS-scored runs of
the influence and ensembles studies.
"""
