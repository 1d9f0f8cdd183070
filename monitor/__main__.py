"""Allow ``python -m monitor`` as a synonym for the ``stiffness-monitor`` console script."""

from monitor.cli import main

raise SystemExit(main())
