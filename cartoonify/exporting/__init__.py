"""Exporting a run's checkpoint for use outside this package, with a model card beside it.

* :mod:`.job`: the checkpoint (resolved as sampling resolves it), its step, the run's settings, the pipeline;
* :mod:`.formats`: the formats (a registry of writers: ``single-file``, ``diffusers``) and :func:`export_model`;
* :mod:`.lora`: the ``lora`` format (diffusers' LoRA file and the kohya layout), registered on import;
* :mod:`.card`: the model card (``README.md``, ``samples.png``) written beside every export;
* :mod:`.cli`: ``python -m cartoonify.export``.
"""

from .card import write_model_card
from .formats import FORMATS, check_format, export_model, register_format
from .job import ExportError, ExportJob
from .lora import kohya_state_dict, write_lora  # registers the "lora" format

__all__ = ["FORMATS", "ExportError", "ExportJob", "check_format", "export_model", "kohya_state_dict", "register_format",
           "write_lora", "write_model_card"]
