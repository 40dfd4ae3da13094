"""Checks before anything heavy: are the images there, and can the base model be loaded without the network?

Each problem comes back as one paragraph that names the folder or model, says what belongs there and which
notebook or command makes it. :func:`check_inputs` checks a training run's config; :func:`preflight` raises
:class:`PreflightError` listing every problem at once (``build_trainer`` calls it before the run folder is
touched, ``python -m cartoonify.train`` prints it and exits 2). :func:`check_photos` is 05_stylize's check,
:func:`check_parameters` the one ``python -m cartoonify.notebooks`` makes before the first notebook starts.

Only the file system and huggingface_hub's local cache are read: nothing is written, nothing is downloaded,
and neither torch nor diffusers is imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import TINY_MODEL, TINY_RANDOM_MODEL, ConfigError, TrainConfig
from ..data.folders import list_images
from ..imaging import IMAGE_EXTENSIONS

# The pretrained tiny model shipped inside the package (cartoonify.models.tiny.EMBEDDED_TINY_DIR; not imported
# from there, which would import torch).
EMBEDDED_TINY_DIR = Path(__file__).resolve().parent.parent / "models" / "embedded" / "tiny"
EMBEDDED_PREFIX = "embedded:"
# the parts of a diffusers pipeline that training loads (cartoonify.models.load_components)
WEIGHT_FOLDERS = ("unet", "vae", "text_encoder")
# files a pipeline folder must hold; "a|b": either
REQUIRED_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                  "tokenizer/vocab.json|tokenizer/tokenizer.json", "scheduler/scheduler_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "on", "yes", "true"}


class PreflightError(ConfigError):
    """The inputs of a run are not ready; ``problems`` holds one paragraph per problem.

    A :class:`~cartoonify.config.ConfigError` (so every handler of bad settings also handles it); its message
    is a heading and the numbered paragraphs.
    """

    def __init__(self, problems: Sequence[str], what: str = "training"):
        self.problems = list(problems)
        self.what = what
        super().__init__(format_problems(self.problems, what))


def format_problems(problems: Sequence[str], what: str = "training") -> str:
    """A heading, then the problems as paragraphs separated by blank lines (numbered when several)."""
    if len(problems) == 1:
        return f"{what} cannot start:\n\n{problems[0]}"
    body = "\n\n".join(f"{i}. {p}" for i, p in enumerate(problems, 1))
    return f"{what} cannot start, {len(problems)} problems:\n\n{body}"


def require(problems: Sequence[str], what: str = "training") -> None:
    """Raise :class:`PreflightError` if there are problems."""
    if problems:
        raise PreflightError(problems, what)


def preflight(config: TrainConfig, base: str | Path | None = None) -> None:
    """:func:`check_inputs`, raising :class:`PreflightError` with every problem found."""
    require(check_inputs(config, base=base))


# ------------------------------------------------------------------------------------------------
# folders
# ------------------------------------------------------------------------------------------------


def _at(path: str | Path, base: str | Path | None) -> Path:
    """``path`` resolved against ``base`` when it is relative (``~`` expanded)."""
    p = Path(path).expanduser()
    return p if base is None or p.is_absolute() else Path(base) / p


def _folder_state(folder: Path) -> tuple[str, int]:
    """``("missing" | "file" | "empty" | "ok", number of images)``."""
    if not folder.exists():
        return "missing", 0
    if not folder.is_dir():
        return "file", 0
    n = len(list_images(folder))
    return ("ok" if n else "empty"), n


def _what_is_wrong(key: str, shown: str, state: str) -> str:
    if state == "missing":
        return f"{key} '{shown}' does not exist."
    if state == "file":
        return f"{key} '{shown}' is a file, not a folder."
    return f"{key} '{shown}' holds no images ({', '.join(IMAGE_EXTENSIONS)}; subfolders count, hidden files do not)."


def instance_dir_problem(instance_dir: str | Path, *, resolution: int = 512, sources: Sequence[str] = ("data/raw",),
                         base: str | Path | None = None) -> tuple[str | None, int]:
    """The paragraph for a missing or empty ``instance_dir`` (None if it holds images), and its image count."""
    state, n = _folder_state(_at(instance_dir, base))
    if state == "ok":
        return None, n
    folder = Path(instance_dir)
    out = folder.parent if folder.name == "images" else folder
    source = " ".join(str(s) for s in sources) or "data/raw"
    then = "" if folder.name == "images" else f", then set instance_dir to '{out / 'images'}'"
    text = (
        f"{_what_is_wrong('instance_dir', str(instance_dir), state)} It holds the style images DreamBooth learns "
        f"from: about 200 of them, {resolution}² or larger, on white or black backgrounds (a caption "
        f"<image>.txt beside an image replaces the instance prompt). 01_collect makes it from the folders and "
        f"URL lists in `sources`; from the command line: put the images in {source} and run "
        f"`python -m cartoonify.collect {source} --out {out} --size {resolution}`, which writes {out}/images"
        f"{then}. Or point instance_dir at a folder of prepared images."
    )
    return text, 0


def check_photos(photos_dir: str | Path, base: str | Path | None = None) -> list[str]:
    """05_stylize's check: ``photos_dir`` exists and holds images. One paragraph per problem (none: ready)."""
    state, _ = _folder_state(_at(photos_dir, base))
    if state == "ok":
        return []
    return [(
        f"{_what_is_wrong('photos_dir', str(photos_dir), state)} 05_stylize turns the photos of people in it into "
        f"the trained style: put a few photos there (.jpg or .png, any size: they are EXIF-rotated and "
        f"center-cropped to the model's size), or set photos_dir to a folder that holds them. The demo's "
        f"stand-ins are drawn by 01_collect when make_demo_data is true."
    )]


def check_class_dir(config: TrainConfig, base: str | Path | None = None) -> list[str]:
    """``class_dir`` may be missing or empty (the missing class images are generated), but not a file."""
    folder = _at(config.class_dir, base)
    if config.with_prior_preservation and folder.exists() and not folder.is_dir():
        return [(
            f"class_dir '{config.class_dir}' is a file, not a folder. It is where the {config.num_class_images} class "
            f"images of prior preservation go (the missing ones are generated by the base model before training): "
            f"move the file away, or set class_dir to a folder (a missing one is created)."
        )]
    return []


# ------------------------------------------------------------------------------------------------
# the base model
# ------------------------------------------------------------------------------------------------


def hub_offline() -> str | None:
    """The variable that makes the hub offline (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``), or None."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return name
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE"
    except ImportError:  # pragma: no cover - a dependency of diffusers
        pass
    return None


def hub_cache_dir() -> str:
    """huggingface_hub's cache folder (``HF_HUB_CACHE``, else ``HF_HOME``/hub)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_HUB_CACHE") or str(Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The folder of ``repo_id``'s snapshot in the local hub cache, or None; never contacts the hub."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # not cached, an invalid id, no huggingface_hub: all mean "not available offline"
        return None


def missing_parts(folder: str | Path) -> list[str]:
    """What a diffusers pipeline folder lacks of what training loads (config files, safetensors weights)."""
    root = Path(folder)
    missing = [name.replace("|", " or ") for name in REQUIRED_FILES
               if not any((root / alt).is_file() for alt in name.split("|"))]
    for sub in WEIGHT_FOLDERS:
        if not any(p.is_file() for p in (root / sub).glob("*.safetensors")):
            missing.append(f"{sub}/*.safetensors")
    return missing


def _download_hint(name: str, variant: str | None, local_dir: str | None = None) -> str:
    weights = f"*.{variant}.safetensors" if variant else "*/*.safetensors"
    target = f" --local-dir {local_dir}" if local_dir else ""
    return f'hf download {name} --include "*.json" --include "*.txt" --include "{weights}"{target}'


def _suggested_folder(name: str) -> str:
    return f"models/{name.rstrip('/').split('/')[-1]}"


def check_model(name: str, revision: str | None = None, variant: str | None = None, *,
                key: str = "pretrained_model", base: str | Path | None = None) -> list[str]:
    """Whether the base model can be loaded as training loads it, without downloading: an embedded name, a
    complete local diffusers folder, or a hub id that is in the local cache when the hub is offline (online, a
    hub id is downloaded on first use and is not checked). One paragraph per problem."""
    name = str(name)
    if name.startswith(EMBEDDED_PREFIX):
        return _check_embedded(name, key)
    local = _at(name, base)
    if local.exists():
        return _check_folder(local, name, key, variant)
    looks_like_path = name.startswith((".", "/", "~")) or "\\" in name or not _HUB_ID.match(name)
    if looks_like_path:
        return [(
            f"{key} '{name}' does not exist ({local.absolute()}), and it is no model hub id (owner/name) either. "
            f"Point it at a diffusers pipeline folder, or at a hub id such as "
            f"stable-diffusion-v1-5/stable-diffusion-v1-5."
        )]
    return _check_hub(name, revision, variant, key, local)


def _check_embedded(name: str, key: str) -> list[str]:
    if name == TINY_RANDOM_MODEL:
        return []
    if name == TINY_MODEL:
        if (EMBEDDED_TINY_DIR / "model_index.json").is_file():
            return []
        return [(
            f"{key} '{name}': the embedded tiny model is missing from {EMBEDDED_TINY_DIR} (an incomplete "
            f"checkout or install). Build it with `python -m cartoonify.training.basemodel --out "
            f"{EMBEDDED_TINY_DIR}` (about 30 minutes on 2 CPU cores), or reinstall the package from a full clone."
        )]
    return [(
        f"{key} '{name}' is no embedded model: the embedded ones are '{TINY_MODEL}' (pretrained, shipped with "
        f"the package) and '{TINY_RANDOM_MODEL}' (random weights, for tests). Use one of them, a hub id such as "
        f"stable-diffusion-v1-5/stable-diffusion-v1-5, or a local diffusers folder."
    )]


def _check_folder(local: Path, name: str, key: str, variant: str | None) -> list[str]:
    if not local.is_dir():
        return [(
            f"{key} '{name}' is a file; training loads a diffusers pipeline folder (model_index.json, unet/, "
            f"vae/, text_encoder/, tokenizer/, scheduler/). Convert a single-file checkpoint with diffusers' "
            f"StableDiffusionPipeline.from_single_file(...).save_pretrained(folder) and point {key} at the folder."
        )]
    missing = missing_parts(local)
    if not missing:
        return []
    return [(
        f"{key} '{name}' is a folder but not a complete diffusers pipeline: it lacks {', '.join(missing)} "
        f"(weights must be .safetensors). Save a pipeline there with `pipe.save_pretrained('{name}')`, or "
        f"download one into it: `{_download_hint('<hub id>', variant, name)}`."
    )]


def _check_hub(name: str, revision: str | None, variant: str | None, key: str, local: Path) -> list[str]:
    flag = hub_offline()
    if flag is None:
        return []  # online: downloaded (or found in the cache) on first use
    snapshot = cached_snapshot(name, revision)
    folder = _suggested_folder(name)
    get_it = (
        f"To get it once: log in if the model needs it (`hf auth login`, and accept its licence on its hub "
        f"page), then either put it in the cache with `{_download_hint(name, variant)}` (offline runs then find "
        f"it), or download it to a folder with `{_download_hint(name, variant, folder)}` and set {key} to "
        f"'{folder}' (in the parameters file, or `--{key} {folder}` on the command line). Or let it download on "
        f"first use by running with the hub online ({flag}=0)."
    )
    why = (f"the hub is offline ({flag}=1; `make` sets HF_HUB_OFFLINE=1 for `make demo` and `make test`, so "
           f"nothing is downloaded)")
    if snapshot is None:
        return [(
            f"{key} '{name}' is no folder here ({local.absolute()}), so it is taken as a model hub id; that model is "
            f"not in the local hub cache ({hub_cache_dir()}), and {why}. {get_it}"
        )]
    missing = missing_parts(snapshot)
    if missing:
        return [(
            f"{key} '{name}' is a model hub id that is only partly in the local hub cache ({snapshot} lacks "
            f"{', '.join(missing)}), and {why}. {get_it}"
        )]
    return []


# ------------------------------------------------------------------------------------------------
# a training run, a notebooks run
# ------------------------------------------------------------------------------------------------


def check_inputs(config: TrainConfig, *, sources: Sequence[str] = ("data/raw",),
                 base: str | Path | None = None) -> list[str]:
    """Everything a training run needs before it starts, one paragraph per problem (empty: ready).

    The instance images (there, and more of them than ``holdout_images``); ``class_dir`` a folder if it
    exists (missing or empty is fine: the class images are generated); the base model loadable without a
    download when the hub is offline. Relative paths are taken from ``base`` (default: the working folder).
    """
    problems = []
    missing, n = instance_dir_problem(config.instance_dir, resolution=config.resolution, sources=sources, base=base)
    if missing:
        problems.append(missing)
    elif config.holdout_images and n <= config.holdout_images:
        problems.append(
            f"config key 'holdout_images' is {config.holdout_images} but instance_dir {config.instance_dir} holds "
            f"only {n} images: hold out fewer, or set holdout_images: 0 to turn the held-out loss off "
            f"(or add images)."
        )
    problems += check_class_dir(config, base)
    problems += check_model(config.pretrained_model, config.revision, config.variant, base=base)
    return problems


def check_parameters(params: Mapping[str, Any], names: Sequence[str], base: str | Path | None = None
                     ) -> tuple[list[str], list[str]]:
    """The checks of a notebooks run before its first notebook starts: ``(problems, notes)``.

    Problems stop the run: the base model of 02_train; its instance images when 01_collect does not run
    before it; a trained run for 03-05 when 02_train does not run. Notes are printed and the run goes on:
    05_stylize's photos, which can be added while the run trains.
    """
    from ..config import RunConfig, train_config_from_parameters
    from ..runs import RunLayout, list_checkpoints

    problems: list[str] = []
    notes: list[str] = []
    names = list(names)
    sources = [str(s) for s in params.get("sources", ["data/raw"])]
    if "02_train" in names:
        config = train_config_from_parameters(dict(params))
        if "01_collect" not in names:
            missing, _ = instance_dir_problem(config.instance_dir, resolution=config.resolution, sources=sources,
                                              base=base)
            problems += [missing] if missing else []
        problems += check_class_dir(config, base)
        problems += check_model(config.pretrained_model, config.revision, config.variant, base=base)
    elif {"03_evaluate", "04_compare_schedulers", "05_stylize"} & set(names):
        run_dir = RunConfig.from_parameters(params).run_dir
        layout = RunLayout(_at(run_dir, base))
        if not list_checkpoints(layout.run_dir) and not layout.pipeline.is_dir():
            later = next(n for n in names if n != "01_collect")
            problems.append(
                f"the run folder '{run_dir}' holds no trained run (no checkpoints, no final pipeline), which "
                f"{later} needs. Train first: run 02_train (`python -m cartoonify.notebooks <parameters file> "
                f"--only 02_train`, or `python -m cartoonify.train --config <parameters file>`), or set run_name "
                f"(and outputs_dir) to a run that has been trained."
            )
    if "05_stylize" in names and not ("01_collect" in names and params.get("make_demo_data")):
        photos = check_photos(str(params.get("photos_dir", "data/photos")), base)
        notes += [f"05_stylize will need photos: {p}" for p in photos]
    return problems, notes
