"""`python -m server`: the same as `callbox-server`."""

from .cli import main

raise SystemExit(main())
