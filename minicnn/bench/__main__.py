"""``python -m minicnn.bench``: the quick benchmark; ``--worker``: a worker process (see :mod:`.worker`)."""

import argparse
import sys

from . import __doc__ as package_doc
from .report import main
from .worker import serve

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m minicnn.bench", description=package_doc.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve()
    else:
        sys.exit(main(quick=True))
