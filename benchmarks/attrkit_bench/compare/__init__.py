"""dattri 0.3's and kronfluence 1.0.1's counterparts of attrkit's methods, run on the same inputs for comparison.

``dattri`` (is it installed, its version), ``influence`` (its influence-function
attributors), ``ensembles`` (its TRAK, TracIn and RPS), ``kronfluence`` (kronfluence's
EK-FAC / K-FAC influence beside attrkit's ``if`` rows: how to install it without
torchvision, which parameters it covers) and ``counterparts`` (a resolved attrkit spec
mapped to its dattri or kronfluence counterpart, or why there is none).
"""
