"""``python -m imagetag``: the same as the ``imagetag`` console script."""

from imagetag.cli import main

raise SystemExit(main())
