"""Speed and memory benchmarks of cartoonify's trainer: ``python -m benchmarks.bench {tiny,sd15,reference}``.

- :mod:`benchmarks.bench`: the command line;
- :mod:`benchmarks.suite`: the ``tiny`` and ``sd15`` suites (training variants in rounds, then the parts);
- :mod:`benchmarks.workers`: one measurement in a fresh process;
- :mod:`benchmarks.training`, :mod:`benchmarks.parts`: the measurements themselves;
- :mod:`benchmarks.reference`: diffusers' ``train_dreambooth.py`` against ours, side by side;
- :mod:`benchmarks.report`: the JSON and markdown results;
- :mod:`benchmarks.standin`: the torchvision stand-in the reference runs diffusers' script with.

This package uses cartoonify; cartoonify never imports it.
"""
