"""``python -m fastconv``: the ``fastconv`` command (see :mod:`fastconv.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
