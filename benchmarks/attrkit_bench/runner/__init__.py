"""``attrkit bench SETTING``: methods and metrics from the command line, run on a prepared setting.

``choices`` parses ``--methods`` and ``--metrics``, ``method`` runs one method (time, peak
memory, every metric, dattri's counterpart), ``document`` runs them all into the JSON
result, ``explain`` writes ``--explain``'s explanation, and ``command`` is the command
itself (options, distributed launch, printing).
"""
