"""Rating: the append-only store, the blind widget driven from Python, and the summary statistics."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cartoonify.rating import (
    NO_RATINGS_MESSAGE,
    GroupSummary,
    RatingItem,
    RatingStore,
    RatingWidget,
    best_group,
    bootstrap_ci,
    collect_items,
    rating_session,
    summarize,
    summary_html,
    summary_message,
    summary_table,
    write_summary_csv,
)
from cartoonify.runs import RunLayout


def _png(color: tuple[int, int, int], size: int | tuple[int, int] = 4) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size) if isinstance(size, int) else size, color).save(buf, format="PNG")
    return buf.getvalue()


def make_run(root: Path, steps=(500, 3500), n_images: int = 3, nsfw: dict | None = None) -> Path:
    """A fake run folder: ``validation/step-<s>/image-XX.png`` + ``images.json``; ``nsfw`` maps (step, i) -> flag."""
    nsfw = nsfw or {}
    for step in steps:
        folder = root / "validation" / f"step-{step}"
        folder.mkdir(parents=True)
        records = []
        for i in range(n_images):
            name = f"image-{i:02d}.png"
            (folder / name).write_bytes(_png((step % 256, i * 40, 0)))
            records.append({"file": name, "seed": 42 + i, "nsfw": nsfw.get((step, i))})
        meta = {"prompt": "a person, Disney style", "step": step, "scheduler": "PNDMScheduler", "images": records}
        (folder / "images.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path / "run", nsfw={(500, 1): True, (3500, 0): False})


# ---------------------------------------------------------------------------------------------------------------
# items
# ---------------------------------------------------------------------------------------------------------------


def test_collect_items(run_dir):
    items = collect_items(run_dir)
    assert [i.path for i in items] == [f"validation/step-{s}/image-{k:02d}.png" for s in (500, 3500) for k in range(3)]
    assert [i.group for i in items] == [500] * 3 + [3500] * 3
    assert [i.excluded for i in items] == [False, True, False, False, False, False]
    assert items[0].seed == 42 and items[0].meta["prompt"] == "a person, Disney style"
    assert items[0].meta["file"] == "image-00.png" and "images" not in items[0].meta
    with pytest.raises(dataclasses.FrozenInstanceError):
        items[0].group = 1  # frozen
    twin = RatingItem(items[0].path, items[0].group, seed=items[0].seed, meta={"other": "meta"})
    assert twin == items[0] and hash(twin) == hash(items[0])  # hashable; meta takes no part in equality
    assert len({*items, twin}) == len(items)


def test_collect_items_other_groups(tmp_path):
    for name in ("euler_a", "ddim"):
        folder = tmp_path / "schedulers" / name
        folder.mkdir(parents=True)
        (folder / "image-00.png").write_bytes(_png((0, 0, 0)))
        (folder / "images.json").write_text(json.dumps({"scheduler": name, "images": [{"file": "image-00.png"}]}))
    items = collect_items(tmp_path, pattern="schedulers/*/images.json", group_key="scheduler")
    assert [(i.group, i.path) for i in items] == [
        ("ddim", "schedulers/ddim/image-00.png"),
        ("euler_a", "schedulers/euler_a/image-00.png"),
    ]


def test_collect_items_errors(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        collect_items(tmp_path / "nowhere")
    bad = run_dir / "validation" / "step-500" / "images.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="step-500"):
        collect_items(run_dir)


@pytest.mark.parametrize(
    "record",
    [
        {"step": 500},  # no image list
        {"step": 500, "images": [{"seed": 1}]},  # an image without its file
        {"step": 500, "images": [{"file": ""}]},  # an empty file name
        {"images": [{"file": "image-00.png"}]},  # no group key
    ],
)
def test_collect_items_rejects_malformed_records(tmp_path, record):
    folder = tmp_path / "validation" / "step-500"
    folder.mkdir(parents=True)
    (folder / "images.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="step-500"):
        collect_items(tmp_path)


def test_collect_items_without_records(tmp_path):
    assert collect_items(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# store
# ---------------------------------------------------------------------------------------------------------------


def test_store_roundtrip_latest_and_raters(tmp_path):
    store = RatingStore(tmp_path)
    assert store.records() == [] and store.latest() == {}
    store.add("validation/step-500/image-00.png", "alice", 3)
    store.add("validation/step-500/image-00.png", " alice ", 5)  # a re-rating replaces
    store.add("validation/step-500/image-00.png", "bob", 9)
    assert store.path == RunLayout(tmp_path).ratings
    lines = (tmp_path / "ratings.csv").read_text().splitlines()
    assert lines[0] == "time,rater,image,value" and len(lines) == 4

    again = RatingStore(tmp_path)  # e.g. after a kernel restart
    assert [r["value"] for r in again.records()] == [3, 5, 9]
    assert again.latest() == {
        ("alice", "validation/step-500/image-00.png"): 5,
        ("bob", "validation/step-500/image-00.png"): 9,
    }
    assert again.rated_by("alice") == {"validation/step-500/image-00.png"}
    assert again.rated_by("carol") == set()
    assert again.raters() == ["alice", "bob"]


@pytest.mark.parametrize("value", [0, 11, 7.0, "7", True, None])
def test_store_rejects_bad_values(tmp_path, value):
    with pytest.raises(ValueError, match=repr(value).replace("(", r"\(")):
        RatingStore(tmp_path).add("a.png", "alice", value)
    assert not (tmp_path / "ratings.csv").exists()


@pytest.mark.parametrize("rater", ["", "   ", None, "two\nlines"])
def test_store_rejects_bad_raters(tmp_path, rater):
    with pytest.raises(ValueError, match="rater"):
        RatingStore(tmp_path).add("a.png", rater, 5)
    assert not (tmp_path / "ratings.csv").exists()


@pytest.mark.parametrize("image", ["", "two\nlines"])
def test_store_rejects_bad_image_paths(tmp_path, image):
    with pytest.raises(ValueError, match="image path"):
        RatingStore(tmp_path).add(image, "alice", 5)
    assert not (tmp_path / "ratings.csv").exists()


def test_store_last_rater(tmp_path):
    store = RatingStore(tmp_path)
    assert store.last_rater() is None  # no file
    store.path.write_text("time,rater,image,value\n")
    assert store.last_rater() is None  # only the header
    store.add("a.png", "bob", 3)
    store.add("b.png", "alice", 5)
    store.add("a.png", " carol ", 4)
    store.add("c.png", "alice", 6)
    assert RatingStore(tmp_path).last_rater() == "alice"  # the last row, not the last name in order


def test_store_other_filename(tmp_path):
    store = RatingStore(tmp_path, filename="schedulers.csv")
    store.add(Path("schedulers") / "ddim" / "image-00.png", "alice", 6)  # a path is stored in POSIX form
    assert store.path == tmp_path / "schedulers.csv" and not RunLayout(tmp_path).ratings.exists()
    assert RatingStore(tmp_path, filename="schedulers.csv").latest() == {("alice", "schedulers/ddim/image-00.png"): 6}
    assert RatingStore(tmp_path).records() == []


def test_store_fsyncs_every_row(tmp_path, monkeypatch):
    """Each rating is on disk before add() returns: one fsync of the ratings file per row, after the write."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(Path(tmp_path / "ratings.csv").read_bytes().count(b"\n"))  # what the file holds by then
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = RatingStore(tmp_path)
    store.add("a.png", "alice", 3)
    store.add("b.png", "alice", 4)
    assert synced == [2, 3]  # header + row, then the second row


def test_store_survives_truncated_last_line(tmp_path):
    store = RatingStore(tmp_path)
    store.add("validation/step-500/image-00.png", "alice", 4)
    path = tmp_path / "ratings.csv"
    with open(path, "ab") as fh:  # a process killed in the middle of writing a row
        fh.write(b"2024-01-01T00:00:00+00:00,alice,validation/step-5")
    before = path.read_bytes()

    assert [r["value"] for r in store.records()] == [4]
    assert path.read_bytes() == before  # reading never touches the file

    with pytest.warns(UserWarning, match="unfinished last line"):
        store.add("validation/step-500/image-01.png", "alice", 8)
    after = path.read_bytes()
    complete = before[: before.rfind(b"\n") + 1]
    assert after.startswith(complete)  # the complete rows are untouched
    assert after[len(complete) :].endswith(b",alice,validation/step-500/image-01.png,8\n")
    assert after.count(b"\n") == 3  # header, two rows: the partial row is gone, not completed
    records = RatingStore(tmp_path).records()
    assert [(r["image"], r["value"]) for r in records] == [
        ("validation/step-500/image-00.png", 4),
        ("validation/step-500/image-01.png", 8),
    ]


def test_store_never_counts_a_row_cut_short(tmp_path):
    """A row for 10 cut after its "1" parses as a 1: it must not be counted, nor completed."""
    store = RatingStore(tmp_path)
    store.add("a.png", "alice", 4)
    with open(tmp_path / "ratings.csv", "ab") as fh:
        fh.write(b"2024-01-01T00:00:00.000+00:00,alice,b.png,1")  # was ",10\n"
    with pytest.warns(UserWarning, match="unfinished"):
        assert [r["image"] for r in store.records()] == ["a.png"]
    with pytest.warns(UserWarning, match="unfinished"):
        store.add("c.png", "alice", 7)
    assert [(r["image"], r["value"]) for r in store.records()] == [("a.png", 4), ("c.png", 7)]


def test_store_skips_malformed_middle_line(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("time,rater,image,value\nt,alice,a.png,3\ngarbage\nt,alice,b.png,99\nt,bob,a.png,6\n")
    with pytest.warns(UserWarning) as caught:
        records = RatingStore(tmp_path).records()
    assert [(r["rater"], r["value"]) for r in records] == [("alice", 3), ("bob", 6)]
    messages = [str(w.message) for w in caught]
    assert any("line 3" in m for m in messages) and any("line 4" in m for m in messages)


# ---------------------------------------------------------------------------------------------------------------
# widget
# ---------------------------------------------------------------------------------------------------------------


def _collector():
    got = []
    return got, lambda path, rater, value: got.append((path, rater, value))


def test_widget_buttons_keys_and_skip(run_dir):
    items = collect_items(run_dir)
    w = RatingWidget(items, run_dir)
    got, cb = _collector()
    w.on_rating(cb)
    assert w.remaining == 5 and all(b.disabled for b in w.buttons)
    w.buttons[6].click()  # no rater yet: nothing happens
    assert got == [] and "name" in w.status_html.value

    w.rater_box.value = "alice"
    assert not any(b.disabled for b in w.buttons)
    first = w.current
    assert w.image_area.children[0].children[0].value == (run_dir / first.path).read_bytes()
    w.buttons[6].click()
    assert got == [(first.path, "alice", 7)]

    second = w.current
    assert second != first
    w.key_box.value = "10"
    assert got[-1] == (second.path, "alice", 10) and w.key_box.value == ""

    third = w.current
    w.skip_button.click()
    assert len(got) == 2 and w.current not in (first, second, third)

    fourth = w.current
    w.key_box.value = "0"  # 0 means 10
    assert got[-1] == (fourth.path, "alice", 10)
    w.key_box.value = "x"
    assert len(got) == 3 and "unknown key" in w.status_html.value
    w.key_box.value = "s"
    assert len(got) == 3
    assert w.remaining == 2 and w.ratings[("alice", first.path)] == 7

    while w.current is not None:
        w.buttons[4].click()
    assert w.remaining == 0 and "all 5 images rated" in w.status_html.value
    assert all(b.disabled for b in w.buttons)
    assert {p for p, _, _ in got} == {i.path for i in items if not i.excluded}


def test_widget_excludes_flagged_images(run_dir):
    items = collect_items(run_dir)
    flagged = "validation/step-500/image-01.png"
    w = RatingWidget(items, run_dir, blind=False)
    got, cb = _collector()
    w.on_rating(cb)
    w.rater_box.value = "alice"
    seen = []
    while w.current is not None:
        seen.append(w.current.path)
        w.buttons[0].click()
    assert flagged not in seen and flagged not in {p for p, _, _ in got}
    assert len(seen) == 5
    assert flagged in w.excluded_html.value
    assert "excluded (flagged by the safety checker)" in w.excluded_box.get_title(0)
    assert "1 excluded (flagged by the safety checker)" in w.status_html.value


def test_widget_blind_and_unblind(run_dir):
    w = RatingWidget(collect_items(run_dir), run_dir)
    w.rater_box.value = "alice"
    step = str(w.current.group)
    assert step not in w.group_html.value and "step-" not in w.group_html.value
    assert "hidden" in w.group_html.value
    w.unblind()
    assert w.blind_toggle.value and step in w.group_html.value
    w.blind_toggle.value = False
    assert step not in w.group_html.value


def test_widget_order_depends_on_seed(tmp_path):
    run = make_run(tmp_path / "run", steps=(100, 200, 300, 400), n_images=4)
    items = collect_items(run)
    order = lambda seed: [i.path for i in RatingWidget(items, run, seed=seed).order]
    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == sorted(i.path for i in items)
    assert [i.path for i in RatingWidget(items, run, blind=False).order] == [i.path for i in items]


def test_widget_grid_mode(tmp_path):
    run = make_run(tmp_path / "run", steps=(100, 200, 300), n_images=3, nsfw={(200, 2): True})
    items = collect_items(run)
    w = RatingWidget(items, run, mode="grid", seed=3)
    got, cb = _collector()
    w.on_rating(cb)
    w.rater_box.value = "alice"
    group = w.current.group
    page = [i for i in items if i.group == group and not i.excluded]
    assert len(w.image_area.children) == len(page)
    borders = [tile.layout.border for tile in w.image_area.children]
    assert sum("transparent" not in b for b in borders) == 1  # only the active image is highlighted
    shown = [i for i in w.order if i.group == group]  # the tiles, in the order shown
    assert "transparent" not in borders[shown.index(w.current)]  # ... and it is the current one
    assert "&#10003;" not in "".join(t.children[1].value for t in w.image_area.children)

    for k, _ in enumerate(page):
        assert w.current.group == group
        active = shown.index(w.current)
        assert w.image_area.children[active].children[1].value == f"&#9654; #{active + 1}"  # marked and numbered
        w.buttons[5].click()
        if k < len(page) - 1:  # still on the page: the rated tile shows its rating
            assert w.image_area.children[active].children[1].value == f"#{active + 1} &#10003; 6"
    assert sorted(p for p, _, _ in got) == sorted(i.path for i in page)  # one rating per image
    assert w.current.group != group
    assert len(w.image_area.children) == len([i for i in items if i.group == w.current.group and not i.excluded])


def test_widget_back_allows_rerating(run_dir):
    w = RatingWidget(collect_items(run_dir), run_dir)
    got, cb = _collector()
    w.on_rating(cb)
    w.rater_box.value = "alice"
    first = w.current
    w.buttons[0].click()
    w.back_button.click()
    assert w.current == first
    w.buttons[8].click()
    assert got == [(first.path, "alice", 1), (first.path, "alice", 9)]
    assert w.remaining == 4


def test_widget_callback_failure_is_not_counted(run_dir):
    w = RatingWidget(collect_items(run_dir), run_dir)

    def broken(path, rater, value):
        raise OSError("disk full")

    w.on_rating(broken)
    w.rater_box.value = "alice"
    first = w.current
    with pytest.raises(OSError):
        w.rate(3)
    assert w.current == first and w.remaining == 5 and "disk full" in w.status_html.value
    w.buttons[2].click()  # ipywidgets logs the error of a click handler; the widget stays put
    assert w.current == first and w.remaining == 5 and w.ratings == {}


def test_session_resumes_after_restart(run_dir):
    w1 = rating_session(run_dir)
    w1.rater_box.value = "alice"
    rated = [w1.current.path]
    w1.buttons[6].click()
    rated.append(w1.current.path)
    w1.key_box.value = "3"
    expected = next(i.path for i in w1.order if i.path not in rated)
    del w1  # the kernel restarts

    w2 = rating_session(run_dir)
    assert w2.order == rating_session(run_dir).order
    w2.rater_box.value = "alice"
    assert w2.current.path == expected and w2.remaining == 3
    assert RatingStore(run_dir).latest() == {("alice", rated[0]): 7, ("alice", rated[1]): 3}


def test_two_raters_are_kept_apart(run_dir):
    w = rating_session(run_dir)
    w.rater_box.value = "alice"
    start = w.current.path
    w.buttons[1].click()
    w.buttons[2].click()

    bob = rating_session(run_dir)
    bob.rater_box.value = "bob"
    assert bob.current.path == start and bob.remaining == 5
    bob.buttons[9].click()

    w.rater_box.value = "bob"  # the same widget switched to bob sees bob's rating
    assert w.remaining == 4
    latest = RatingStore(run_dir).latest()
    assert latest[("alice", start)] == 2 and latest[("bob", start)] == 10
    assert RatingStore(run_dir).raters() == ["alice", "bob"]


def test_session_prefills_the_most_recent_rater(run_dir):
    assert rating_session(run_dir).rater_box.value == ""  # an empty store: an empty box
    assert rating_session(run_dir).rater == "" and "Enter your name" in rating_session(run_dir).status_html.value
    store = RatingStore(run_dir)
    store.add("validation/step-500/image-00.png", "alice", 7)
    store.add("validation/step-3500/image-00.png", "bob", 4)
    store.add("validation/step-500/image-00.png", "alice", 8)
    store.add("validation/step-3500/image-01.png", "bob", 5)  # bob rated last
    w = rating_session(run_dir)  # a kernel restart, no rater given
    assert w.rater_box.value == "bob" and w.rater == "bob" and w.remaining == 3
    assert w.current.path not in {"validation/step-3500/image-00.png", "validation/step-3500/image-01.png"}
    w.buttons[0].click()  # ready to rate at once
    assert RatingStore(run_dir).records()[-1]["rater"] == "bob"
    explicit = rating_session(run_dir, rater="carol")  # an explicit rater wins
    assert explicit.rater_box.value == "carol" and explicit.remaining == 5
    assert rating_session(run_dir, rater="").rater == "bob"  # an empty name (the config default) is no name
    assert RatingWidget(collect_items(run_dir), run_dir).rater == ""  # the bare widget knows no store


def _sized_run(root: Path, sizes: dict[int, list]) -> Path:
    """A run whose step ``s`` has one image per entry of ``sizes[s]`` (a side, or ``(width, height)``)."""
    for step, shapes in sizes.items():
        folder = root / "validation" / f"step-{step}"
        folder.mkdir(parents=True)
        records = []
        for i, shape in enumerate(shapes):
            (folder / f"image-{i:02d}.png").write_bytes(_png((i * 40, 0, 0), shape))
            records.append({"file": f"image-{i:02d}.png", "seed": i})
        (folder / "images.json").write_text(json.dumps({"step": step, "images": records}))
    return root


def _shown_widths(w: RatingWidget) -> dict[str, str]:
    """``path -> width`` of the image widgets on the current page."""
    page = [i for i in w.order if i.group == w.current.group] if w.mode == "grid" else [w.current]
    return {i.path: tile.children[0].width for i, tile in zip(page, w.image_area.children)}


@pytest.mark.parametrize("side, shown", [(64, "64"), (512, "512"), (768, "512")])
def test_widget_shows_an_image_at_its_own_size_at_most_512(tmp_path, side, shown):
    run = _sized_run(tmp_path / "run", {100: [side]})
    for w in (rating_session(run, rater="alice"), RatingWidget(collect_items(run), run, rater="alice")):
        assert w.display_size == 0
        image = w.image_area.children[0].children[0]
        assert bytes(image.value) == (run / w.current.path).read_bytes() and image.width == shown
    assert rating_session(run, rater="alice", display_size=200).image_area.children[0].children[0].width == "200"


def test_widget_display_size_per_image_in_grid_mode(tmp_path):
    run = _sized_run(tmp_path / "run", {100: [64, 512, 768, (1024, 512)], 200: [32]})
    w = rating_session(run, rater="alice", mode="grid", blind=False)
    assert w.current.group == 100 and _shown_widths(w) == {
        "validation/step-100/image-00.png": "64",
        "validation/step-100/image-01.png": "512",
        "validation/step-100/image-02.png": "512",
        "validation/step-100/image-03.png": "512",  # the longer side capped, the aspect ratio kept
    }
    tall = _sized_run(tmp_path / "tall", {1: [(256, 1024)]})
    assert rating_session(tall, rater="a").image_area.children[0].children[0].width == "128"
    fixed = rating_session(run, rater="alice", mode="grid", blind=False, display_size=300)
    assert set(_shown_widths(fixed).values()) == {"300"}
    for _ in range(4):
        w.buttons[4].click()
    assert w.current.group == 200 and list(_shown_widths(w).values()) == ["32"]


@pytest.mark.parametrize("bad", [-1, 2.5, "256", True, None])
def test_widget_rejects_bad_display_sizes(tmp_path, bad):
    run = _sized_run(tmp_path / "run", {100: [8]})
    with pytest.raises(ValueError, match="display_size"):
        RatingWidget(collect_items(run), run, display_size=bad)


def test_display_width_reads_the_header_only(tmp_path, monkeypatch):
    from cartoonify.rating.widget import MAX_DISPLAY_SIZE, display_width

    path = tmp_path / "big.png"
    path.write_bytes(_png((1, 2, 3), (900, 300)))
    from PIL import ImageFile

    Image.init()  # the format plugins, some of which build images on import
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the pixels were decoded"))
    assert display_width(path) == MAX_DISPLAY_SIZE and display_width(path, 77) == 77
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert display_width(tmp_path / "junk.png") == MAX_DISPLAY_SIZE == 512
    assert display_width(tmp_path / "missing.png") == 512


# ---------------------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------------------


def _stats_fixture():
    items = [RatingItem(f"validation/step-500/image-{k:02d}.png", 500, excluded=(k == 2)) for k in range(3)]
    items += [RatingItem(f"validation/step-3500/image-{k:02d}.png", 3500) for k in range(2)]
    items += [RatingItem("validation/step-9000/image-00.png", 9000)]
    ratings = {
        ("alice", "validation/step-500/image-00.png"): 3,
        ("alice", "validation/step-500/image-01.png"): 4,
        ("alice", "validation/step-3500/image-00.png"): 8,
        ("alice", "validation/step-3500/image-01.png"): 9,
        ("bob", "validation/step-3500/image-00.png"): 9,
        ("bob", "validation/step-3500/image-01.png"): 9,
        ("bob", "validation/step-500/image-02.png"): 1,  # an excluded image: ignored
        ("bob", "elsewhere.png"): 1,  # not among the items: ignored
    }
    return items, ratings


def test_summarize_by_hand():
    items, ratings = _stats_fixture()
    s500, s3500, s9000 = summarize(items, ratings)
    assert (s500.group, s500.n, s500.n_excluded) == (500, 2, 1)
    assert s500.mean == pytest.approx((3 + 4) / 2)
    assert s500.std == pytest.approx(math.sqrt(((3 - 3.5) ** 2 + (4 - 3.5) ** 2) / (2 - 1)))  # sqrt(0.5)
    mean = (8 + 9 + 9 + 9) / 4
    assert (s3500.n, s3500.mean) == (4, pytest.approx(mean))
    assert s3500.std == pytest.approx(math.sqrt(((8 - mean) ** 2 + 3 * (9 - mean) ** 2) / 3))
    assert s9000.n == 0 and math.isnan(s9000.mean) and math.isnan(s9000.std) and math.isnan(s9000.ci_low)
    for s, lo, hi in ((s500, 3, 4), (s3500, 8, 9)):
        assert lo <= s.ci_low <= s.mean <= s.ci_high <= hi
    assert best_group([s500, s3500, s9000]) is s3500


def test_summarize_accepts_store_records(tmp_path):
    items, ratings = _stats_fixture()
    store = RatingStore(tmp_path)
    store.add("validation/step-500/image-00.png", "alice", 10)  # replaced by the re-rating below
    for (rater, path), value in ratings.items():
        store.add(path, rater, value)
    from_records = summarize(items, store.records())
    assert from_records == summarize(items, ratings) == summarize(items, store.latest())


def _reference_bootstrap(values, confidence=0.95, n_resamples=10000, seed=0):
    """A plain percentile bootstrap: resample indices with replacement, take the quantiles of the means."""
    x = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_resamples, len(x)))
    means = x[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    return tuple(np.quantile(means, [tail, 1 - tail]))


@pytest.mark.parametrize(
    "values, confidence, n_resamples, seed",
    [([3, 4, 8, 9, 9, 2, 7], 0.95, 10000, 0), ([3.1, 4.7, 8.2, 9.9, 9.05], 0.8, 2000, 7), ([1, 10], 0.5, 500, 3)],
)
def test_bootstrap_ci_matches_a_plain_bootstrap(values, confidence, n_resamples, seed):
    expected = _reference_bootstrap(values, confidence, n_resamples, seed)
    got = bootstrap_ci(values, confidence=confidence, n_resamples=n_resamples, seed=seed)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("confidence, z", [(0.95, 1.959964), (0.5, 0.674490)])
def test_bootstrap_ci_of_a_large_sample_is_the_normal_interval(confidence, z):
    """For a large sample the bootstrap interval of the mean is mean ± z·sd/√n (central limit theorem)."""
    x = np.random.default_rng(123).gamma(2.0, 1.5, size=2000)  # skewed, yet the mean is near normal at this n
    half = z * x.std(ddof=1) / math.sqrt(x.size)
    lo, hi = bootstrap_ci(x, confidence=confidence, n_resamples=20000, seed=5)
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_bootstrap_ci_covers_the_true_mean():
    """Over many synthetic samples the 90% interval holds the true mean about 90% of the time."""
    rng = np.random.default_rng(2024)
    trials, hits = 300, 0
    for trial in range(trials):
        sample = rng.normal(5.0, 2.0, size=40)
        lo, hi = bootstrap_ci(sample, confidence=0.9, n_resamples=1000, seed=trial)
        hits += lo <= 5.0 <= hi
    assert 0.84 <= hits / trials <= 0.95  # the percentile bootstrap undercovers slightly at n=40


def test_bootstrap_ci():
    values = [3, 4, 8, 9, 9, 2, 7]
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(values, seed=1)
    spread = [3.1, 4.7, 8.2, 9.9, 9.05, 2.3, 7.6]
    assert bootstrap_ci(spread, seed=1) != bootstrap_ci(spread, seed=2)
    lo, hi = bootstrap_ci(values)
    assert min(values) <= lo < sum(values) / len(values) < hi <= max(values)
    narrow = bootstrap_ci(values, confidence=0.5)
    assert lo <= narrow[0] <= narrow[1] <= hi
    assert bootstrap_ci([6, 6, 6]) == (6.0, 6.0)
    assert bootstrap_ci([7]) == (7.0, 7.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(values, confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(values, n_resamples=0)


def test_best_group_ties_and_empty():
    a = GroupSummary(100, 2, 5.0, 0.0, 5.0, 5.0)
    b = GroupSummary(200, 3, 5.0, 0.0, 5.0, 5.0)
    empty = GroupSummary(300, 0, math.nan, math.nan, math.nan, math.nan)
    assert best_group([a, b, empty]) is a
    assert best_group([empty]) is None and best_group([]) is None


def test_summary_text():
    items, ratings = _stats_fixture()
    summaries = summarize(items, ratings)
    assert summary_message(summarize(items, {})) == NO_RATINGS_MESSAGE
    assert summary_message([]) == NO_RATINGS_MESSAGE
    s = summaries[1]
    assert summary_message(summaries) == f"Best step: 3500 (mean 8.75, 95% CI [{s.ci_low:.2f}, {s.ci_high:.2f}], n=4)"
    table = summary_table(summaries)
    lines = table.strip().splitlines()
    assert lines[0] == "| step | n | mean | std | 95% CI | excluded |" and len(lines) == 5
    assert "| 500 | 2 | 3.50 | 0.71 |" in table and "**3500**" in table and "| 9000 | 0 | n/a |" in table
    page = summary_html(summaries, group_label="scheduler")
    assert page.startswith("<table>") and "Best" not in page and page.count("<tr") == 4
    assert "<th>scheduler</th>" in page and page.count("font-weight:bold") == 1
    assert "<tr style='font-weight:bold'><td style='text-align:right'>3500</td>" in page
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary_table(summarize(items, {}))


@pytest.mark.parametrize("rated", [True, False])
def test_summary_sentence_is_shown_once(rated):
    """The notebook cell ``display(HTML(summary_html(s))); print(summary_message(s))`` shows the sentence once."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import HTML, display
    from IPython.utils.capture import capture_output

    items, ratings = _stats_fixture()
    summaries = summarize(items, ratings if rated else {})
    sentence = summary_message(summaries)
    assert sentence.startswith("Best step: 3500" if rated else "No ratings yet")
    had_shell = InteractiveShell.initialized()
    InteractiveShell.instance()  # a shell, so that display() publishes rich output as in a notebook
    try:
        with capture_output() as out:
            display(HTML(summary_html(summaries)))
            print(summary_message(summaries))
    finally:
        if not had_shell:
            InteractiveShell.clear_instance()
    shown = out.stdout + "".join(o.data.get("text/html", "") for o in out.outputs)
    assert "<table>" in shown and shown.count(sentence) == 1


def test_write_summary_csv(tmp_path):
    items, ratings = _stats_fixture()
    summaries = summarize(items, ratings)
    target = tmp_path / "figures" / "rating_summary.csv"
    assert write_summary_csv(summaries, target, group_label="scheduler") == target
    with target.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["scheduler", "n", "mean", "std", "ci_low", "ci_high", "confidence", "n_excluded"]
    assert [(r["scheduler"], int(r["n"]), int(r["n_excluded"])) for r in rows] == [
        ("500", 2, 1),
        ("3500", 4, 0),
        ("9000", 0, 0),
    ]
    for row, s in zip(rows, summaries):
        for key in ("mean", "std", "ci_low", "ci_high", "confidence"):
            assert float(row[key]) == pytest.approx(getattr(s, key), nan_ok=True)
    assert sorted(p.name for p in target.parent.iterdir()) == ["rating_summary.csv"]  # no temporary file left


def test_import_needs_neither_torch_nor_ipywidgets():
    code = "import sys, cartoonify.rating; assert not {'torch', 'ipywidgets'} & set(sys.modules), sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
