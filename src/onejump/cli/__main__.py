"""``python -m onejump.cli``: the same as the ``onejump`` command."""

import sys

from .main import main

sys.exit(main())
