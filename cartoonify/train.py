"""``python -m cartoonify.train``: DreamBooth training from the command line (see :mod:`cartoonify.training.cli`).

From Python, use :func:`cartoonify.run_training`.
"""

import sys

from .training.cli import config_from_args, main

__all__ = ["config_from_args", "main"]

if __name__ == "__main__":
    sys.exit(main())
