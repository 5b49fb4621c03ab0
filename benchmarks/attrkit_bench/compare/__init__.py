"""dattri 0.3's counterparts of attrkit's methods, run on the same inputs for comparison.

``dattri`` (is it installed, its version), ``influence`` (its influence-function
attributors), ``ensembles`` (its TRAK, TracIn and RPS) and ``counterparts`` (a resolved
attrkit spec mapped to its dattri counterpart, or why there is none).
"""
