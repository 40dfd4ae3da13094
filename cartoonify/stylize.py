"""Photos of people into the style: img2img of every photo at every strength, from the same seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .imaging import fit_square, gray_ssim, open_rgb, save_png
from .models import image_to_image
from .style import style_score
from .utils import write_json

INPUT_FILE = "input.png"  # the photo as the model saw it (square, the model's size)
RECORD_FILE = "stylized.json"


def read_stylized(out_dir: str | Path) -> dict[str, Any]:
    """The ``stylized.json`` record of a folder of stylized photos."""
    import json

    return json.loads((Path(out_dir) / RECORD_FILE).read_text())


def strength_file(strength: float) -> str:
    """The output file of one strength."""
    return f"strength-{strength:.2f}.png"


def stylize_photos(
    pipe,
    photos: Sequence[str | Path],
    out_dir: str | Path,
    *,
    prompt: str,
    strengths: Sequence[float],
    seed: int = 0,
    steps: int = 50,
    guidance_scale: float = 7.5,
    extra: dict[str, Any] | None = None,
) -> dict[str, list[Path]]:
    """img2img every photo at every strength (same seed); writes ``out_dir/<photo>/strength-<s>.png``,
    the center-cropped ``input.png``, and ``stylized.json`` with, per output, its grayscale SSIM to the
    input (how much of the photo it keeps) and its weight-free style score (how cartoon it looks; the
    photo's own score beside it). Returns ``{photo stem: [files]}``."""
    out_dir = Path(out_dir)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    written: dict[str, list[Path]] = {}
    records = []
    for photo in photos:
        photo = Path(photo)
        src = open_rgb(photo)
        folder = out_dir / photo.stem
        model_input = fit_square(src, size)
        save_png(model_input, folder / INPUT_FILE)
        files = []
        for strength in strengths:
            res = image_to_image(
                pipe, src, prompt, strength=strength, seed=seed, num_inference_steps=steps, guidance_scale=guidance_scale
            )
            path = folder / strength_file(strength)
            save_png(res.images[0], path)
            files.append(path)
            records.append(
                {"photo": str(photo), "file": str(path.relative_to(out_dir)), "strength": strength, "nsfw": res.nsfw[0],
                 "ssim": round(gray_ssim(model_input, res.images[0]), 4),
                 "style_score": round(style_score(res.images[0]), 4),
                 "photo_style_score": round(style_score(model_input), 4)}
            )
        written[photo.stem] = files
    write_json(
        out_dir / RECORD_FILE,
        {"prompt": prompt, "seed": seed, "steps": steps, "guidance_scale": guidance_scale, **(extra or {}), "images": records},
    )
    return written
