"""``python -m cartoonify.export CHECKPOINT --format single-file|diffusers [--run RUN_DIR] [--out PATH]
[--dtype fp16|fp32] [--overwrite]``: export a checkpoint with its model card (see :mod:`cartoonify.exporting`).

From Python, use :func:`cartoonify.exporting.export_model`.
"""

import sys

from .exporting import export_model
from .exporting.cli import main

__all__ = ["export_model", "main"]

if __name__ == "__main__":
    sys.exit(main())
