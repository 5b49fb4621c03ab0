"""The tools of ``attrkit bench``: commands on what the benchmark made (see :mod:`attrkit_bench.commands`)."""
