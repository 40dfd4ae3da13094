"""Collect a training set from real-world image folders and URL lists (no torch).

:func:`collect_dataset` turns folders (searched recursively) and text files of URLs into a clean
training set of square RGB PNGs and says what it did with every input in ``out_dir/manifest.csv``::

    out_dir/
        images/<hash16>.png        the training images (plus <hash16>.txt where a caption came along)
        originals/<sha256>.<ext>   downloaded originals, named by content hash and by what the bytes are
        originals/urls.json        which URL gave which original (a rerun downloads nothing twice)
        manifest.csv               one row per input: source, hash, size, mode, verdict, reason, output
        contact_sheet.png          thumbnails of the kept images
        collect.json               the settings and counts of the last run

Every input gets a verdict: ``kept``, ``rejected`` or ``duplicate`` (the same bytes as an earlier input),
with a short ``code`` (counted in the summary) and a readable ``reason``. Originals are only ever opened
for reading; outputs are written atomically and named by the hash of the original's bytes, so a rerun
skips what it already made ("already collected") and changes nothing already kept. Point training at
``out_dir/images``. The settings are :class:`~cartoonify.config.CollectConfig`'s.

* :mod:`.sources`: folders, URL lists, the out_dir check;
* :mod:`.fetch`: downloads and the originals;
* :mod:`.decode`: magic numbers, decoding, RGB, EXIF orientation;
* :mod:`.pixels`: padding, the background score, whitening, the perceptual hash;
* :mod:`.manifest`: rows, result, summary, contact sheet, settings record;
* :mod:`.run`: one input to one verdict, and :func:`collect_dataset`;
* :mod:`.cli`: ``python -m cartoonify.collect SOURCE [SOURCE ...] --out OUT [--size 512] [--fit pad|crop]``.
"""

from .cli import build_parser, main
from .decode import describe_bytes, sniff_image
from .errors import FetchError, NothingCollectedError, OutputError
from .fetch import fetch_url, make_fetcher
from .manifest import MANIFEST_COLUMNS, CollectResult, ManifestRow, format_summary, nothing_kept_message, read_manifest
from .pixels import background_score, hamming, perceptual_hash, whiten_background
from .run import collect_dataset
from .sources import read_url_list

__all__ = [
    "MANIFEST_COLUMNS",
    "CollectResult",
    "FetchError",
    "ManifestRow",
    "NothingCollectedError",
    "OutputError",
    "background_score",
    "build_parser",
    "collect_dataset",
    "describe_bytes",
    "fetch_url",
    "format_summary",
    "hamming",
    "main",
    "make_fetcher",
    "nothing_kept_message",
    "perceptual_hash",
    "read_manifest",
    "read_url_list",
    "sniff_image",
    "whiten_background",
]
