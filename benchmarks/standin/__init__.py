"""A torchvision stand-in for running diffusers' ``train_dreambooth.py`` without torchvision.

:mod:`benchmarks.standin.launch` runs the script with ``standin/`` on ``sys.path``, so that its
``from torchvision import transforms`` finds :mod:`benchmarks.standin.torchvision`.
"""

from pathlib import Path

STANDIN_PATH = Path(__file__).resolve().parent  # the folder that holds the ``torchvision`` stand-in
