"""`python -m client`: the same as `callbox`."""

from .cli import main

raise SystemExit(main())
