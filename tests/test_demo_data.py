"""Tests for cartoonify.data.demo and cartoonify.data.drawings (offline, fast)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cartoonify.data import demo, drawings
from cartoonify.data.demo import (
    STYLE_SUFFIX,
    demo_photos,
    main,
    make_demo_dataset,
    make_style_images,
)

SIZE = 96
N = 8
REPO = Path(__file__).resolve().parents[1]


def _python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with the repository first on the import path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One shared set of small style images."""
    out = tmp_path_factory.mktemp("style")
    make_style_images(out, n=N, size=SIZE, seed=0)
    return out


def _border(arr: np.ndarray) -> np.ndarray:
    """All 1-pixel border pixels of an HxWx3 array, shape (K, 3)."""
    return np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])


def _hue_clusters(img: Image.Image, min_frac: float = 0.03) -> int:
    """Number of 30-degree hue bins holding >= min_frac of the saturated pixels."""
    hsv = np.asarray(img.convert("HSV")).reshape(-1, 3).astype(int)
    sat = hsv[(hsv[:, 1] > 80) & (hsv[:, 2] > 60)]
    if len(sat) == 0:
        return 0
    counts = np.bincount(sat[:, 0] * 12 // 256, minlength=12)
    return int((counts >= min_frac * len(sat)).sum())


def _files(folder: Path) -> dict[str, bytes]:
    """Name -> bytes of every file in ``folder``."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_style_images_shape_border_and_content(style_dir: Path) -> None:
    paths = sorted(style_dir.glob("style-*.png"))
    assert [p.name for p in paths] == [f"style-{i:03d}.png" for i in range(N)]
    for path in paths:
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
            arr = np.asarray(im)
            white = (_border(arr) > 240).all(axis=1)
            assert white.mean() >= 0.9, f"{path.name}: border not white"
            far = (arr.astype(int).sum(axis=2) < 3 * 255 - 150).mean()
            assert far > 0.05, f"{path.name}: looks blank"
            assert _hue_clusters(im) >= 2, f"{path.name}: too few colours"


def test_returns_image_paths(tmp_path: Path) -> None:
    paths = make_style_images(tmp_path, n=3, size=32, captions=False)
    assert paths == [tmp_path / f"style-{i:03d}.png" for i in range(3)]
    assert not list(tmp_path.glob("*.txt"))


def test_deterministic_and_all_different(style_dir: Path, tmp_path: Path) -> None:
    make_style_images(tmp_path, n=N, size=SIZE, seed=0)
    assert _files(tmp_path) == _files(style_dir)
    arrays = []
    for path in sorted(style_dir.glob("*.png")):
        with Image.open(path) as im:
            arrays.append(np.asarray(im))
    for a, b in itertools.combinations(arrays, 2):
        assert not np.array_equal(a, b)


def test_seed_changes_images(style_dir: Path, tmp_path: Path) -> None:
    make_style_images(tmp_path, n=2, size=SIZE, seed=1)
    assert (tmp_path / "style-000.png").read_bytes() != (style_dir / "style-000.png").read_bytes()


def test_captions(style_dir: Path) -> None:
    captions = [(style_dir / f"style-{i:03d}.txt").read_text(encoding="utf-8") for i in range(N)]
    assert all(c.endswith(STYLE_SUFFIX) and len(c) > len(STYLE_SUFFIX) + 5 for c in captions)
    # subjects cycle character / animal / object / landscape
    assert len(set(captions[:4])) == 4
    assert "girl" in captions[0] or "boy" in captions[0]
    assert len(set(captions)) >= N - 1


def test_idempotent_keeps_mtime(tmp_path: Path) -> None:
    make_style_images(tmp_path, n=3, size=32)
    old = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    past = 1_000_000_000
    for p in old:  # push mtimes into the past so any rewrite would show
        os.utime(p, ns=(past, past))
    make_style_images(tmp_path, n=3, size=32)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == {p: past for p in old}


def test_conflicting_file_raises_and_is_untouched(tmp_path: Path) -> None:
    target = tmp_path / "style-001.png"
    target.write_bytes(b"not mine")
    with pytest.raises(FileExistsError, match="style-001.png"):
        make_style_images(tmp_path, n=3, size=32)
    assert target.read_bytes() == b"not mine"
    assert _files(tmp_path) == {"style-001.png": b"not mine"}  # nothing written on conflict, no temp files


def test_conflict_in_last_file_writes_nothing(tmp_path: Path) -> None:
    """All targets are checked before the first write, so a conflict at the end still writes nothing."""
    last = tmp_path / "style-002.txt"
    last.write_text("someone else's caption", encoding="utf-8")
    with pytest.raises(FileExistsError, match="style-002.txt"):
        make_style_images(tmp_path, n=3, size=32)
    assert _files(tmp_path) == {"style-002.txt": b"someone else's caption"}


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are flushed to disk before they appear; a failure leaves neither the target nor a temp file."""
    synced: list[int] = []

    def failing_fsync(fd: int) -> None:
        synced.append(fd)
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        make_style_images(tmp_path, n=2, size=32)
    assert len(synced) == 1
    assert list(tmp_path.iterdir()) == []


def test_conflicting_caption_raises(tmp_path: Path) -> None:
    make_style_images(tmp_path, n=2, size=32)
    caption = tmp_path / "style-000.txt"
    caption.write_text("edited caption", encoding="utf-8")
    with pytest.raises(FileExistsError, match="style-000.txt"):
        make_style_images(tmp_path, n=2, size=32)
    assert caption.read_text(encoding="utf-8") == "edited caption"


def test_bad_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size must be >= 16"):
        make_style_images(tmp_path / "out", n=1, size=4)
    with pytest.raises(ValueError, match="n must be >= 0"):
        make_style_images(tmp_path / "out", n=-1, size=32)
    assert not (tmp_path / "out").exists()


def test_render_style_image_is_deterministic() -> None:
    img, caption = drawings.render_style_image(5, size=drawings.MIN_SIZE, seed=3)
    again, caption_again = demo.render_style_image(5, size=drawings.MIN_SIZE, seed=3)
    assert img.size == (drawings.MIN_SIZE, drawings.MIN_SIZE) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.asarray(again)) and caption == caption_again
    assert caption.startswith("a cartoon ") and caption.endswith(STYLE_SUFFIX)


def test_demo_photos(tmp_path: Path) -> None:
    paths = demo_photos(tmp_path)
    assert [p.name for p in paths] == ["astronaut.png", "camera.png"]
    for path in paths:
        with Image.open(path) as im:
            assert im.mode == "RGB"
            assert im.size == (512, 512)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert demo_photos(tmp_path) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes


def test_demo_photos_conflict(tmp_path: Path) -> None:
    (tmp_path / "camera.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="camera.png"):
        demo_photos(tmp_path)
    assert _files(tmp_path) == {"camera.png": b"x"}  # astronaut.png not written either


def test_demo_photos_without_skimage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install scikit-image"):
        demo_photos(tmp_path)


def test_make_demo_dataset_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = make_demo_dataset(tmp_path / "a", size=32, n=4)
    assert dirs == {"instance_dir": tmp_path / "a" / "instance",
                    "photos_dir": tmp_path / "a" / "photos"}
    instance = _files(dirs["instance_dir"])
    assert sorted(instance) == sorted(f"style-{i:03d}.{ext}" for i in range(4) for ext in ("png", "txt"))
    assert all(instance[f"style-{i:03d}.txt"].decode("utf-8").endswith(STYLE_SUFFIX) for i in range(4))
    assert sorted(_files(dirs["photos_dir"])) == ["astronaut.png", "camera.png"]
    before = {key: _files(folder) for key, folder in dirs.items()}
    assert main([str(tmp_path / "a"), "--size", "32", "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert "instance_dir:" in out and "(8 files)" in out and "(2 files)" in out
    assert "style-003.png" in out and "camera.png" in out
    assert {key: _files(folder) for key, folder in dirs.items()} == before  # the CLI run changed nothing


def test_python_m_entry_point(tmp_path: Path) -> None:
    proc = _python("-m", "cartoonify.data.demo", "out", "--size", "32", "--n", "2", "--seed", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "style-001.txt" in proc.stdout and "astronaut.png" in proc.stdout
    expected = tmp_path / "expected"
    make_style_images(expected, n=2, size=32, seed=1)
    assert _files(tmp_path / "out" / "instance") == _files(expected)
    assert sorted(_files(tmp_path / "out" / "photos")) == ["astronaut.png", "camera.png"]


def test_import_does_not_load_torch(tmp_path: Path) -> None:
    code = ("import sys, cartoonify.data.demo, cartoonify.data.drawings; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
            "or m.startswith(('cartoonify.models', 'cartoonify.train', 'cartoonify.sample'))); "
            "assert not heavy, heavy")
    proc = _python("-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
