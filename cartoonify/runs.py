"""One home for the run folder's layout, ``outputs/<run>/``: every path of a run is spelled here.

::

    config.json, run_info.json
    holdout.json                     the instance images held out of training (for the held-out loss)
    checkpoints/checkpoint-<step>/   a checkpoint; complete when its marker checkpoint.json is there
    validation/step-<step>/          image-XX.png, grid.png, images.json
    drift/step-<step>/               the class prompt at fixed seeds (step 0: the base model), images.json
    logs/                            TensorBoard events, train_log.csv, heldout_loss.csv
    pipeline/                        the fine-tuned pipeline (diffusers format)
    ratings.csv                      every human rating (1-10)
    pairwise.csv                     every pairwise choice (left, right or tie)
    scores/                          automated scores (<name>.csv) and the embedding cache (cache/)
    evaluation.json                  03_evaluate's table and its best checkpoint (read by 04 and 05)
    schedulers/<checkpoint>/         the scheduler comparison: <scheduler>/images.json, timing.csv
    stylized/<checkpoint>/           stylized photos, stylized.json
    exports/<checkpoint>-<format>/   an exported model with its model card (python -m cartoonify.export)
    figures/                         the notebooks' figures and tables
    notebooks/                       the executed notebooks

The files *inside* a checkpoint (weights, optimizer, RNG) are named by
:mod:`cartoonify.training.checkpoint`; this module knows the folders (``resume/``, the resume state that
only the newest checkpoints keep), the completeness marker and its checksums, so that listing and
resolving checkpoints needs no torch.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig
from .utils import sha256_file, write_json

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
MARKER = "checkpoint.json"  # the last file of a checkpoint: its presence means the save completed
RESUME_DIR = "resume"  # inside a checkpoint: what only resuming needs (kept by the newest checkpoints)
RESUME_KEY = "resume_state"  # the marker's record of it: RESUME_DIR, or None once removed
IMAGES_JSON = "images.json"  # the record of a folder of generated images
TRAIN_LOG = "train_log.csv"
HELDOUT_LOG = "heldout_loss.csv"
HOLDOUT_FILE = "holdout.json"
EVALUATION_FILE = "evaluation.json"
RATINGS_FILE = "ratings.csv"
PAIRWISE_FILE = "pairwise.csv"
CHECKPOINT_PREFIX = "checkpoint-"
VALIDATION_PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, damaged, unsafe to load, or does not fit the model."""


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder. ``logging_dir`` is the run's :attr:`TrainConfig.logging_dir`."""

    run_dir: Path
    logging_dir: str = "logs"

    def __post_init__(self):
        object.__setattr__(self, "run_dir", Path(self.run_dir))

    @classmethod
    def of(cls, config: TrainConfig) -> "RunLayout":
        return cls(Path(config.output_dir), config.logging_dir)

    @property
    def config(self) -> Path:
        return self.run_dir / CONFIG_FILE

    @property
    def run_info(self) -> Path:
        return self.run_dir / RUN_INFO_FILE

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step}"

    def partial_checkpoint(self, step: int) -> Path:
        """Where a checkpoint is written before it is renamed into place."""
        return self.checkpoints / f".tmp-{CHECKPOINT_PREFIX}{step}"

    def replaced_checkpoint(self, step: int) -> Path:
        """Where a checkpoint of the same step is moved while a new one takes its place."""
        return self.checkpoints / f".old-{CHECKPOINT_PREFIX}{step}"

    @property
    def validation(self) -> Path:
        return self.run_dir / "validation"

    def validation_dir(self, step: int) -> Path:
        return self.validation / f"{VALIDATION_PREFIX}{step}"

    @property
    def holdout(self) -> Path:
        """The list of held-out instance images (written when a run starts)."""
        return self.run_dir / HOLDOUT_FILE

    @property
    def drift(self) -> Path:
        return self.run_dir / "drift"

    def drift_dir(self, step: int) -> Path:
        """The class prompt rendered by the model of ``step`` (0: the base model)."""
        return self.drift / f"{VALIDATION_PREFIX}{step}"

    @property
    def logs(self) -> Path:
        return self.run_dir / self.logging_dir

    @property
    def train_log(self) -> Path:
        return self.logs / TRAIN_LOG

    @property
    def heldout_log(self) -> Path:
        """The held-out loss at every checkpoint (and at step 0)."""
        return self.logs / HELDOUT_LOG

    @property
    def pipeline(self) -> Path:
        return self.run_dir / "pipeline"

    @property
    def partial_pipeline(self) -> Path:
        return self.run_dir / ".tmp-pipeline"

    @property
    def ratings(self) -> Path:
        return self.run_dir / RATINGS_FILE

    @property
    def pairwise(self) -> Path:
        return self.run_dir / PAIRWISE_FILE

    @property
    def scores(self) -> Path:
        return self.run_dir / "scores"

    def scores_csv(self, name: str) -> Path:
        """A table of automated scores (``checkpoints``, ``schedulers-<checkpoint>``...)."""
        return self.scores / f"{name}.csv"

    def score_cache(self, model: str) -> Path:
        """The embedding cache of one evaluation model (``model`` is a file-safe name)."""
        return self.scores / "cache" / f"{model}.npz"

    @property
    def evaluation(self) -> Path:
        return self.run_dir / EVALUATION_FILE

    @property
    def figures(self) -> Path:
        return self.run_dir / "figures"

    def figure(self, name: str) -> Path:
        return self.figures / name

    def schedulers(self, checkpoint: str) -> Path:
        return self.run_dir / "schedulers" / checkpoint

    def stylized(self, checkpoint: str) -> Path:
        return self.run_dir / "stylized" / checkpoint

    def export_dir(self, checkpoint: str, fmt: str) -> Path:
        """Where a checkpoint (``checkpoint-<step>``, ``pipeline``) exported in format ``fmt`` goes by default."""
        return self.run_dir / "exports" / f"{checkpoint}-{fmt}"

    @property
    def notebooks(self) -> Path:
        return self.run_dir / "notebooks"

    def image_sets(self, folder: Path) -> str:
        """The glob pattern, relative to the run, of the ``images.json`` of every image set in ``folder``
        (e.g. each scheduler's folder of a comparison)."""
        return (Path(folder).relative_to(self.run_dir) / "*" / IMAGES_JSON).as_posix()

    # -- what is there ---------------------------------------------------------------------------
    def validation_steps(self) -> list[int]:
        """Steps with a complete validation record, in order."""
        if not self.validation.is_dir():
            return []
        steps = [
            int(p.name[len(VALIDATION_PREFIX):])
            for p in self.validation.glob(f"{VALIDATION_PREFIX}*")
            if p.name[len(VALIDATION_PREFIX):].isdigit() and (p / IMAGES_JSON).is_file()
        ]
        return sorted(steps)


def load_config(run_dir: str | Path) -> TrainConfig:
    """The run's saved :class:`TrainConfig` (a clear error if the folder is not a training run)."""
    path = RunLayout(Path(run_dir)).config
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run (no {CONFIG_FILE}); run 02_train first")
    try:
        return TrainConfig.load(path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def layout_of(run_dir: str | Path) -> RunLayout:
    """The layout of an existing run, with its own ``logging_dir`` (the default when it has no config)."""
    run_dir = Path(run_dir)
    if RunLayout(run_dir).config.is_file():
        return RunLayout.of(load_config(run_dir).replace(output_dir=str(run_dir)))
    return RunLayout(run_dir)


# ------------------------------------------------------------------------------------------------
# images.json: the record of a folder of generated images
# ------------------------------------------------------------------------------------------------


def write_images_json(folder: str | Path, meta: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """Write ``folder/images.json``: ``meta`` (prompt, seed, step, scheduler...) and one record per image
    (``file`` relative to the folder, ``seed``, ``nsfw``...)."""
    return write_json(Path(folder) / IMAGES_JSON, {**meta, "images": list(records)})


def read_images_json(folder_or_file: str | Path) -> dict[str, Any]:
    """Load and check one ``images.json``; any problem is a ``ValueError`` naming the file."""
    path = Path(folder_or_file)
    if path.is_dir() or path.name != IMAGES_JSON:
        path = path / IMAGES_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(isinstance(r, dict) and isinstance(r.get("file"), str) for r in images):
        raise ValueError(f"{path} is not an image record: expected {{'images': [{{'file': ...}}, ...]}}")
    return data


def read_evaluation(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``evaluation.json`` (03_evaluate's table and best checkpoint), or ``None`` if not written yet."""
    path = layout_of(run_dir).evaluation
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"cannot read {path}: {err}; rerun 03_evaluate") from err


# ------------------------------------------------------------------------------------------------
# checkpoints: completeness marker, listing, resolving
# ------------------------------------------------------------------------------------------------


def checkpoint_step(path: str | Path) -> int:
    """The step of a ``checkpoint-<step>`` folder."""
    return int(Path(path).name.rsplit("-", 1)[1])


def write_marker(folder: str | Path, info: dict[str, Any]) -> Path:
    """The last file of a checkpoint: ``info`` plus the size and SHA-256 of every other file."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }
    return write_json(folder / MARKER, {**info, "files": files})


def read_marker(folder: str | Path) -> dict[str, Any]:
    """The marker of a complete checkpoint (what the trainer recorded: step, processes, optimizer...)."""
    return json.loads((Path(folder) / MARKER).read_text())


def verify_checkpoint(folder: str | Path) -> list[str]:
    """Problems of a checkpoint folder (empty when its marker is there and every checksum matches)."""
    folder = Path(folder)
    marker = folder / MARKER
    if not marker.is_file():
        return [f"no {MARKER}: the save did not complete"]
    try:
        files = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as err:
        return [f"{MARKER} is unreadable: {err}"]
    problems = []
    for rel, meta in files.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != meta["bytes"]:
            problems.append(f"{rel} has {path.stat().st_size} bytes, expected {meta['bytes']}")
        elif sha256_file(path) != meta["sha256"]:
            problems.append(f"{rel} does not match its checksum")
    return problems


def resume_dir(folder: str | Path) -> Path | None:
    """Where a complete checkpoint keeps its resume state: ``resume/``; the folder itself for a checkpoint
    of the earlier layout (a marker without ``resume_state``: everything at the top level, fp32 weights in
    ``unet/``); None when it holds evaluation weights only, or its marker cannot be read."""
    folder = Path(folder)
    try:
        marker = read_marker(folder)
    except (OSError, ValueError):
        return None
    if RESUME_KEY not in marker:
        return folder
    return folder / marker[RESUME_KEY] if marker[RESUME_KEY] else None


def drop_resume_state(folder: str | Path) -> bool:
    """Reduce a complete checkpoint to its evaluation weights; returns whether it held a resume state.

    Crash-safe order: the marker is first rewritten (atomically) without the resume files and with
    ``resume_state: null``, so the checkpoint verifies whatever happens next; then every file the marker
    does not list is removed (also those a crash after the rewrite left behind).
    """
    folder = Path(folder)
    where = resume_dir(folder)
    try:
        marker = read_marker(folder)
    except (OSError, ValueError):
        return False  # a damaged marker: leave the folder for verify_checkpoint to report
    if where is not None:
        prefix = "" if where == folder else f"{where.relative_to(folder).as_posix()}/"
        is_resume = (lambda rel: "/" not in rel) if not prefix else (lambda rel: rel.startswith(prefix))
        files = {rel: meta for rel, meta in marker["files"].items() if not is_resume(rel)}
        marker = {**marker, RESUME_KEY: None, "files": files}
        write_json(folder / MARKER, marker)
    for path in sorted(folder.rglob("*"), reverse=True):  # a folder's files before the folder
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != MARKER and rel not in marker["files"]:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return where is not None


def resumable_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints that still hold a resume state, oldest first."""
    return [p for p in list_checkpoints(run_dir) if resume_dir(p) is not None]


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run (those with their marker file), oldest first.

    Folders without the marker are incomplete (a crash during a save) and are reported, not used.
    """
    root = RunLayout(Path(run_dir)).checkpoints
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.name.startswith(".tmp-"):
            logger.warning("ignoring partial checkpoint %s (a save that did not complete)", path)
            continue
        digits = path.name[len(CHECKPOINT_PREFIX):]
        if not (path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and digits.isdigit()):
            continue
        if (path / MARKER).is_file():
            found.append(path)
        else:
            logger.warning("ignoring incomplete checkpoint %s (no %s)", path, MARKER)
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(run_dir: str | Path, which: str, verify: bool = False) -> Path | None:
    """A checkpoint of a run by name: ``"latest"``, ``"pipeline"`` (the final pipeline), a
    ``checkpoint-<step>`` folder name, or a path.

    With ``verify`` (resuming) only a checkpoint that holds a resume state will do: "latest" is the newest
    one whose checksums hold (damaged ones are reported and skipped; None if there is none) and a named one
    that is damaged or holds evaluation weights only is refused. Without it (evaluation), "latest" is the
    newest checkpoint, and "latest" with no checkpoint and an unknown name raise ``FileNotFoundError``.
    """
    layout = RunLayout(Path(run_dir))
    if which == "pipeline":
        if not (layout.pipeline / "model_index.json").is_file():
            raise FileNotFoundError(f"{layout.run_dir} has no final pipeline/ (the run has not finished)")
        return layout.pipeline
    ckpts = list_checkpoints(layout.run_dir)
    if which == "latest":
        if verify:
            return _latest_resumable(layout, ckpts)
        if not ckpts:
            raise FileNotFoundError(f"{layout.run_dir} has no complete checkpoint yet")
        return ckpts[-1]
    path = Path(which)
    if not path.is_dir():
        path = layout.checkpoints / which
    if verify:
        _check_resumable(path, ckpts)
        return path
    if path not in ckpts and not path.is_dir():
        names = ", ".join(p.name for p in ckpts) or "none"
        raise FileNotFoundError(f"no checkpoint {which!r} in {layout.checkpoints} (have: {names})")
    return path


def _latest_resumable(layout: RunLayout, ckpts: list[Path]) -> Path | None:
    """The newest checkpoint with a resume state whose checksums hold; None when the run has none, except
    that checkpoints with evaluation weights only are refused rather than silently trained over."""
    evaluation_only = []
    for path in reversed(ckpts):
        problems = verify_checkpoint(path)
        if problems:
            logger.warning("skipping damaged checkpoint %s: %s", path, "; ".join(problems))
            warnings.warn(f"skipping damaged checkpoint {path}: {'; '.join(problems)}", RuntimeWarning, stacklevel=3)
        elif resume_dir(path) is None:
            evaluation_only.append(path.name)
        else:
            return path
    if evaluation_only:
        raise CheckpointError(
            f"resume_from_checkpoint='latest': no checkpoint in {layout.checkpoints} can be resumed: "
            f"{', '.join(evaluation_only)} hold evaluation weights only (fp16 unet/ and text_encoder/; only the "
            "newest keep_resume_states checkpoints keep the resume state, and a finished run none unless "
            "keep_resume_at_end) and no newer one is intact. They can still be evaluated; to train again, start a "
            "new run in another output_dir."
        )
    return None


def _check_resumable(path: Path, ckpts: list[Path]) -> None:
    """Refuse a named checkpoint that is damaged or holds evaluation weights only, naming what to resume."""
    problems = verify_checkpoint(path)
    if problems:
        raise CheckpointError(f"resume_from_checkpoint: {path} cannot be used: {'; '.join(problems)}")
    if resume_dir(path) is None:
        usable = [p.name for p in ckpts if resume_dir(p) is not None]
        hint = (f"resume from {' or '.join(usable)} instead ('latest' picks the newest)" if usable
                else "no checkpoint of this run can be resumed; start a new run in another output_dir")
        raise CheckpointError(
            f"resume_from_checkpoint: {path.name} holds evaluation weights only (fp16 unet/ and text_encoder/; "
            "its resume state was removed when a newer checkpoint was saved or the run finished, see "
            "keep_resume_states and keep_resume_at_end): it can be "
            f"evaluated but not resumed; {hint}"
        )
