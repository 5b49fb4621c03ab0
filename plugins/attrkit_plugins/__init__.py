"""attrkit's first-party plugins, one module per family.

Each module is its own entry point in the ``attrkit`` group (see pyproject.toml) and
can be blocked by name like any third-party plugin. Modules never import each other:
shared code lives in ``attrkit.functional``.
"""
