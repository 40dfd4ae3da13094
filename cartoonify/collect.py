"""``python -m cartoonify.collect SOURCE [SOURCE ...] --out OUT [--size 512] [--fit pad|crop]``: the collect
step's command line (the code lives in :mod:`cartoonify.data.collect`)."""

import sys

from .data.collect import collect_dataset
from .data.collect.cli import main

__all__ = ["collect_dataset", "main"]

if __name__ == "__main__":
    sys.exit(main())
