"""The command line: ``python -m cartoonify.train --config FILE [--key value ...]``.

Also under accelerate: ``accelerate launch -m cartoonify.train --config configs/disney.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ..config import (
    ConfigError,
    TrainConfig,
    load_mapping,
    load_parameters,
    parameter_types,
    parse_overrides,
    train_config_from_parameters,
)
from ..imaging import ImageLoadError
from ..runs import CheckpointError, list_checkpoints
from .checkpoint import CheckpointSaveError
from .disk import InsufficientDiskError
from .errors import NonFiniteLossError, RunExistsError, TrainingOutOfMemoryError
from .preflight import PreflightError, preflight
from .run import run_training


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """``--config FILE`` then ``--key value`` overrides.

    The file is a TrainConfig (YAML/JSON, e.g. a run's ``config.json``) or a notebooks' parameters file
    (``configs/disney.yaml``): every key must be a known parameter; the TrainConfig fields are used, and
    ``output_dir`` defaults to ``<outputs_dir>/<run_name>``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m cartoonify.train",
        description="DreamBooth fine-tuning with prior preservation. Any TrainConfig key (and run_name, "
        "outputs_dir) can be given as --key value after the config file.",
    )
    parser.add_argument("--config", help="YAML or JSON file of TrainConfig keys or notebook parameters")
    args, rest = parser.parse_known_args(argv)
    data = load_mapping(args.config) if args.config else {}
    data.update(parse_overrides(rest, parameter_types()))
    return train_config_from_parameters(load_parameters(data))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(argv)
        preflight(config.validate())  # every missing input at once, before anything loads or is written
        result = run_training(config)
    except (
        PreflightError,
        ConfigError,
        FileNotFoundError,
        RunExistsError,
        ImageLoadError,
        NonFiniteLossError,
        TrainingOutOfMemoryError,
        InsufficientDiskError,
        CheckpointSaveError,
        CheckpointError,
    ) as err:
        # DataFolderError is a FileNotFoundError; every message names the key, file, folder or step; a
        # PreflightError's is a paragraph per problem
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"done: {result.global_step} steps in {result.output_dir} "
        f"({result.steps_per_second:.2f} steps/s over {result.steps_run} steps); "
        f"checkpoints: {len(list_checkpoints(result.output_dir))}, final pipeline: {result.pipeline_dir}"
    )
    return 0
