"""``python -m kavier_opendc.cli``: the same as the ``kavier`` command."""

import sys

from kavier_opendc.cli import main

sys.exit(main())
