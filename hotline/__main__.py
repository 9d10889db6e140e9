"""``python -m hotline`` runs the CLI."""

from __future__ import annotations

from hotline.cli import main

raise SystemExit(main())
