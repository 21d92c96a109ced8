"""Entry point: ``python -m analysis <command>``."""

from analysis.cli import main

raise SystemExit(main())
