"""Photos of people into the style without losing the person.

* :mod:`.methods`: ``img2img`` (SDEdit) and ``controlnet`` (ControlNet-guided img2img through ``from_pipe``),
  one call each; :class:`Setting` and :func:`sweep`.
* :mod:`.folder`: a folder of photos opened as collect opens images, every file's verdict in
  ``manifest.csv``, every output's settings, seed and scores in ``stylized.json``; reruns skip what is done.
* :mod:`.report`: per-setting means, the style-vs-structure frontier, the recommended setting, a contact sheet.
* :mod:`.session`: :func:`stylize_run`, what 05_stylize calls.
"""

from .folder import (
    INPUT_FILE,
    MANIFEST_FILE,
    RECORD_FILE,
    Controls,
    StylizeResult,
    open_photo,
    read_stylized,
    score_output,
    stylize_folder,
)
from .methods import METHODS, Setting, controlnet, controlnet_pipeline, img2img, sweep
from .report import contact_sheet, frontier, manifest_html, recommend, setting_summary, style_key, sweep_html
from .session import SETTINGS_FILE, StylizeSession, load_controls, stylize_run

__all__ = [n for n in dir() if not n.startswith("_")]
