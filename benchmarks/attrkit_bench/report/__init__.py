"""Result JSON to markdown tables and plots: the one reporting path of the benchmark.

:mod:`~attrkit_bench.report.pages` renders any result document as markdown (a setting's
table, a study's page), :mod:`~attrkit_bench.report.plots` draws the plots,
:mod:`~attrkit_bench.report.output` writes a study's JSON and page. The other modules are
the pages of one kind of result each; :mod:`~attrkit_bench.report.markdown` holds the cells
and tables they share.
"""
