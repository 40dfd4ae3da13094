"""``python -m benchmarks.standin.launch SCRIPT [ARGS...]``: run a training script as ``__main__`` with
the torchvision stand-in importable.

transformers and diffusers decide whether torchvision is installed (and would then use it in places the
stand-in does not cover): diffusers when it is imported, transformers on its first check, which it
caches. So both decide first, finding none, and only then is the stand-in's folder put at the front of
``sys.path``.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m benchmarks.standin.launch SCRIPT [ARGS...]")
    import diffusers  # noqa: F401  (its torchvision check runs on import, and finds none)
    from transformers.utils import is_torchvision_available

    is_torchvision_available()  # cached: transformers' check, run now, finds none

    from . import STANDIN_PATH

    script = Path(argv[0])
    sys.path[:0] = [str(script.resolve().parent), str(STANDIN_PATH)]  # as `python SCRIPT` would, plus the stand-in
    sys.argv = [str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
