from __future__ import annotations

from fusiond.cli import main

raise SystemExit(main())
