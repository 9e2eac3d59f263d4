"""``python -m robustmix``: the same as the ``robustmix`` command."""

from robustmix.cli import main

raise SystemExit(main())
