"""``python -m minicnn`` is the ``minicnn`` command."""

import sys

from .cli import main

if __name__ == "__main__":   # not when a spawned process imports this module (fit_distributed)
    sys.exit(main())
