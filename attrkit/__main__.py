"""``python -m attrkit`` runs the ``attrkit`` command."""

from attrkit.cli import main

raise SystemExit(main())
