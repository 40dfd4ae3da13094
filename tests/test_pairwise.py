"""Pairwise comparisons: the append-only store, the pairs, Bradley-Terry strengths and the blind widget."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cartoonify.rating import (
    Pair,
    PairwiseStore,
    PairwiseSummary,
    PairwiseWidget,
    RatingItem,
    bradley_terry,
    bradley_terry_ci,
    collect_items,
    comparisons_from_records,
    make_pairs,
    pair_key,
    pairwise_html,
    pairwise_session,
    pairwise_summary,
    parse_pair_key,
    spearman,
)
from cartoonify.rating.pairwise import PAIRWISE_FILE


def _png(color: tuple[int, int, int], size: int | tuple[int, int] = 4) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size) if isinstance(size, int) else size, color).save(buf, format="PNG")
    return buf.getvalue()


def make_run(root: Path, steps=(500, 1000, 1500), seeds=(42, 43), nsfw=(), size: int | tuple = 4) -> Path:
    """A fake run: ``validation/step-<s>/image-XX.png`` + ``images.json``; ``nsfw`` holds flagged (step, seed)."""
    for step in steps:
        folder = root / "validation" / f"step-{step}"
        folder.mkdir(parents=True)
        records = []
        for i, seed in enumerate(seeds):
            name = f"image-{i:02d}.png"
            (folder / name).write_bytes(_png((step % 256, i * 40, 0), size))
            records.append({"file": name, "seed": seed, "nsfw": (step, seed) in nsfw})
        meta = {"prompt": "a person, Disney style", "step": step, "images": records}
        (folder / "images.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path / "run")


# ---------------------------------------------------------------------------------------------------------------
# store
# ---------------------------------------------------------------------------------------------------------------


def test_store_roundtrip(tmp_path):
    store = PairwiseStore(tmp_path)
    assert store.records() == [] and store.last_rater() is None and store.path == tmp_path / PAIRWISE_FILE
    store.add("a.png", "b.png", "alice", "left")
    store.add(Path("c") / "d.png", "a.png", " bob ", "tie")
    store.add("b.png", "a.png", "alice", "right")  # the same pair, shown the other way round: replaces
    lines = (tmp_path / "pairwise.csv").read_text().splitlines()
    assert lines[0] == "time,rater,left,right,choice" and len(lines) == 4

    again = PairwiseStore(tmp_path)
    assert [(r["rater"], r["left"], r["right"], r["choice"]) for r in again.records()] == [
        ("alice", "a.png", "b.png", "left"),
        ("bob", "c/d.png", "a.png", "tie"),
        ("alice", "b.png", "a.png", "right"),
    ]
    assert len(again.latest()) == 2 and again.latest()[("alice", ("a.png", "b.png"))]["choice"] == "right"
    assert again.judged_by("alice") == {pair_key("b.png", "a.png")} == {("a.png", "b.png")}
    assert again.judged_by("") == set() and again.judged_by("carol") == set()
    assert again.raters() == ["alice", "bob"] and again.last_rater() == "alice"
    other = PairwiseStore(tmp_path, filename="schedulers_pairwise.csv")
    other.add("a.png", "b.png", "carol", "tie")
    assert other.path.name == "schedulers_pairwise.csv" and len(PairwiseStore(tmp_path).records()) == 3


@pytest.mark.parametrize(
    "args, match",
    [
        (("a.png", "b.png", "alice", "both"), "choice"),
        (("a.png", "b.png", "alice", "skip"), "choice"),
        (("a.png", "b.png", "", "left"), "rater"),
        (("a.png", "b.png", "a\nb", "left"), "rater"),
        (("", "b.png", "alice", "left"), "image path"),
        (("a.png", "b\n.png", "alice", "left"), "image path"),
        (("a.png", "a.png", "alice", "left"), "two different images"),
    ],
)
def test_store_rejects_bad_rows(tmp_path, args, match):
    with pytest.raises(ValueError, match=match):
        PairwiseStore(tmp_path).add(*args)
    assert not (tmp_path / PAIRWISE_FILE).exists()


def test_store_fsyncs_every_row(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append((tmp_path / PAIRWISE_FILE).read_bytes().count(b"\n"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = PairwiseStore(tmp_path)
    store.add("a.png", "b.png", "alice", "left")
    store.add("a.png", "c.png", "alice", "tie")
    assert synced == [2, 3]


def test_store_never_counts_a_row_cut_short(tmp_path):
    store = PairwiseStore(tmp_path)
    store.add("a.png", "b.png", "alice", "left")
    path = tmp_path / PAIRWISE_FILE
    with open(path, "ab") as fh:  # a process killed in the middle of writing a row
        fh.write(b"2024-01-01T00:00:00.000+00:00,alice,a.png,c.png,ti")
    before = path.read_bytes()
    with pytest.warns(UserWarning, match="unfinished last line"):
        assert [r["right"] for r in store.records()] == ["b.png"]
    assert path.read_bytes() == before  # reading never touches the file
    with pytest.warns(UserWarning, match="unfinished last line"):
        store.add("a.png", "d.png", "alice", "right")
    after = path.read_bytes()
    assert after.startswith(before[: before.rfind(b"\n") + 1]) and after.count(b"\n") == 3
    assert [(r["right"], r["choice"]) for r in store.records()] == [("b.png", "left"), ("d.png", "right")]


def test_store_skips_malformed_middle_lines(tmp_path):
    (tmp_path / PAIRWISE_FILE).write_text(
        "time,rater,left,right,choice\nt,alice,a.png,b.png,left\ngarbage\nt,alice,a.png,a.png,tie\n"
        "t,bob,a.png,b.png,maybe\nt,bob,a.png,b.png,tie\n"
    )
    with pytest.warns(UserWarning) as caught:
        records = PairwiseStore(tmp_path).records()
    assert [(r["rater"], r["choice"]) for r in records] == [("alice", "left"), ("bob", "tie")]
    messages = " ".join(str(w.message) for w in caught)
    assert all(f"malformed line {n}:" in messages for n in (3, 4, 5))


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from cartoonify.rating import pairwise_session
    run_dir = sys.argv[1]
    widget = pairwise_session(run_dir, rater="alice")
    widget.buttons["left"].click()  # saved at once
    with open(os.path.join(run_dir, "pairwise.csv"), "ab") as fh:  # a second row, cut short by the kill
        fh.write(b"2024-01-01T00:00:00.000+00:00,alice,validation/step-500/ima")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_choice_survives_sigkill(run_dir):
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(run_dir)], check=False, capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with pytest.warns(UserWarning, match="unfinished last line"):
        records = PairwiseStore(run_dir).records()
    first = make_pairs(collect_items(run_dir))[0]  # the pair pairwise_session shows first
    assert [(r["rater"], r["left"], r["right"], r["choice"]) for r in records] == [
        ("alice", first.left.path, first.right.path, "left")
    ]
    with pytest.warns(UserWarning, match="unfinished"):
        widget = pairwise_session(run_dir)  # a new session: alice again, at her first unjudged pair
    assert widget.rater == "alice" and widget.current == widget.pairs[1] and widget.remaining == 5
    with pytest.warns(UserWarning, match="removing an unfinished last line"):
        widget.buttons["tie"].click()
    assert [r["choice"] for r in PairwiseStore(run_dir).records()] == ["left", "tie"]


# ---------------------------------------------------------------------------------------------------------------
# pairs
# ---------------------------------------------------------------------------------------------------------------


def test_make_pairs_for_checkpoints(run_dir):
    items = collect_items(run_dir)
    pairs = make_pairs(items)
    assert len(pairs) == 2 * 3  # 2 seeds x 3 unordered pairs of steps
    for p in pairs:
        assert p.left.seed == p.right.seed and p.left.group != p.right.group
    assert {(p.left.seed, frozenset((p.left.group, p.right.group))) for p in pairs} == {
        (s, frozenset(g)) for s in (42, 43) for g in combinations((500, 1000, 1500), 2)
    }
    assert make_pairs(items) == pairs and make_pairs(list(reversed(items))) == pairs  # deterministic
    others = [make_pairs(items, seed=s) for s in range(1, 6)]
    assert any(o != pairs for o in others)
    assert all({p.key for p in o} == {p.key for p in pairs} for o in others)
    many = make_pairs(collect_items(make_run(run_dir.parent / "big", steps=range(100, 900, 100))), seed=0)
    lefts = [p.left.group < p.right.group for p in many]
    assert 0.3 < sum(lefts) / len(lefts) < 0.7  # left and right are randomised
    unshuffled = make_pairs(items, shuffle=False)
    assert [p.left.seed for p in unshuffled] == [42] * 3 + [43] * 3


def test_make_pairs_leaves_out_excluded_images(tmp_path):
    run = make_run(tmp_path / "run", nsfw={(1000, 42)})
    pairs = make_pairs(collect_items(run))
    assert len(pairs) == 1 + 3  # seed 42: only 500 vs 1500
    assert all(not p.left.excluded and not p.right.excluded for p in pairs)


def test_make_pairs_for_schedulers():
    def item(scheduler, prompt, seed, k):
        meta = {"scheduler": scheduler, "prompt": prompt, "seed": seed}
        return RatingItem(f"schedulers/{scheduler}/image-{k:02d}.png", scheduler, seed=seed, meta=meta)

    jobs = [("a cat", 1), ("a cat", 2), ("a dog", 1)]
    items = [item(s, p, seed, k) for s in ("ddim", "euler_a", "dpm") for k, (p, seed) in enumerate(jobs)]
    pairs = make_pairs(items, seed=3)
    assert len(pairs) == 3 * 3  # 3 (prompt, seed) jobs x 3 pairs of schedulers
    for p in pairs:
        assert (p.left.meta["prompt"], p.left.seed) == (p.right.meta["prompt"], p.right.seed)
        assert p.left.path[-6:] == p.right.path[-6:]  # image-XX of the same job
    by_meta = make_pairs(items, by="scheduler", seed=3)
    assert by_meta == pairs


def test_comparisons_from_records(run_dir):
    items = collect_items(run_dir)
    pair = make_pairs(items, shuffle=False)[0]
    a, b = pair.left.path, pair.right.path
    records = [
        {"rater": "alice", "left": a, "right": b, "choice": "left"},
        {"rater": "alice", "left": b, "right": a, "choice": "tie"},  # replaces the first
        {"rater": "bob", "left": a, "right": b, "choice": "right"},
        {"rater": "bob", "left": a, "right": "elsewhere.png", "choice": "left"},  # not among the items
    ]
    ga, gb = pair.left.group, pair.right.group
    assert comparisons_from_records(records, items) == [(gb, ga, "tie"), (ga, gb, "right")]


# ---------------------------------------------------------------------------------------------------------------
# Bradley-Terry
# ---------------------------------------------------------------------------------------------------------------

TRUE = {"a": -1.5, "b": -0.5, "c": 0.5, "d": 1.5}


def synthetic(true: dict, per_pair: int, seed: int, ties: float = 0.0) -> list:
    """Comparisons drawn from the Bradley-Terry model of the log strengths ``true`` (sides shuffled)."""
    rng = np.random.default_rng(seed)
    out = []
    for a, b in combinations(true, 2):
        p = 1 / (1 + math.exp(true[b] - true[a]))
        for _ in range(per_pair):
            if rng.random() < ties:
                choice = "tie"
            else:
                choice = "left" if rng.random() < p else "right"
            swapped = {"left": "right", "right": "left"}.get(choice, choice)
            out.append((a, b, choice) if rng.random() < 0.5 else (b, a, swapped))
    return out


def test_bradley_terry_recovers_known_strengths():
    est = bradley_terry(synthetic(TRUE, per_pair=400, seed=0))
    assert list(est) == list(TRUE) and sum(est.values()) == pytest.approx(0, abs=1e-9)
    assert spearman(list(TRUE.values()), [est[g] for g in TRUE]) == 1.0
    for g, true in TRUE.items():
        assert est[g] == pytest.approx(true, abs=0.2)


def test_bradley_terry_is_the_maximum_likelihood_estimate():
    """Without a prior the strengths solve the likelihood equations: each group's wins equal its expected wins."""
    comps = synthetic(TRUE, per_pair=30, seed=1, ties=0.2)
    est = bradley_terry(comps, prior=0)
    for g in TRUE:
        score = {"left": 1, "right": 0, "tie": 0.5}
        wins = sum(score[c] if a == g else 1 - score[c] for a, b, c in comps if g in (a, b))
        expected = sum(1 / (1 + math.exp(est[b if a == g else a] - est[g])) for a, b, c in comps if g in (a, b))
        assert wins == pytest.approx(expected, abs=1e-6)
    two = bradley_terry([("x", "y", "left")] * 7 + [("y", "x", "left")] * 3, prior=0)
    assert two["x"] - two["y"] == pytest.approx(math.log(7 / 3), abs=1e-8)


def test_bradley_terry_symmetric_and_degenerate_data():
    symmetric = [(a, b, c) for a, b in combinations("pqr", 2) for c in ("left", "right")]
    assert bradley_terry(symmetric) == pytest.approx({"p": 0, "q": 0, "r": 0}, abs=1e-8)
    assert bradley_terry([("p", "q", "tie")] * 4) == pytest.approx({"p": 0, "q": 0}, abs=1e-12)
    undefeated = bradley_terry([("p", "q", "left")] * 5 + [("q", "r", "left")] * 5)
    assert all(math.isfinite(v) for v in undefeated.values()) and undefeated["p"] > undefeated["q"] > undefeated["r"]
    # prior virtual ties: 5 + 0.05 wins against 0.05, a ratio of 101
    assert undefeated["p"] - undefeated["q"] == pytest.approx(math.log(101), rel=0.2)
    assert bradley_terry([("p", "q", "left")], groups=["q", "p", "z"])["z"] == pytest.approx(0, abs=1e-9)
    assert bradley_terry([]) == {} and bradley_terry([], groups=[1]) == {1: 0.0}
    with pytest.raises(ValueError, match="win and a loss"):
        bradley_terry([("p", "q", "left")], prior=0)
    with pytest.raises(ValueError, match="not among"):
        bradley_terry([("p", "q", "left")], groups=["p"])
    with pytest.raises(ValueError, match="choice"):
        bradley_terry([("p", "q", "both")])


def test_bradley_terry_ci_covers_the_true_strengths():
    hits = total = 0
    for rep in range(4):
        comps = synthetic(TRUE, per_pair=40, seed=100 + rep)
        cis = bradley_terry_ci(comps, confidence=0.9, n_resamples=300, seed=rep)
        est = bradley_terry(comps)
        for g, (lo, hi) in cis.items():
            assert lo <= est[g] <= hi
            hits += lo <= TRUE[g] <= hi
            total += 1
    assert hits / total >= 0.75
    comps = synthetic(TRUE, per_pair=40, seed=7)
    assert bradley_terry_ci(comps, n_resamples=50, seed=1) == bradley_terry_ci(comps, n_resamples=50, seed=1)
    assert bradley_terry_ci([], groups=["a"]) == {"a": (pytest.approx(math.nan, nan_ok=True),) * 2}


def test_pairwise_summary_and_html():
    comps = [("p", "q", "left"), ("q", "p", "right"), ("p", "q", "tie"), ("q", "r", "left"), ("r", "p", "left")]
    rows = pairwise_summary(comps, groups=["p", "q", "r", "s"], n_resamples=100)
    assert [r.group for r in rows] == ["p", "q", "r", "s"] and all(isinstance(r, PairwiseSummary) for r in rows)
    assert [(r.wins, r.losses, r.ties, r.n) for r in rows] == [(2, 1, 1, 4), (1, 2, 1, 4), (1, 1, 0, 2), (0, 0, 0, 0)]
    assert rows[0].strength == bradley_terry(comps, groups=["p", "q", "r", "s"])["p"]
    assert all(r.ci_low <= r.strength <= r.ci_high for r in rows[:3])
    page = pairwise_html(rows, group_label="scheduler")
    assert "<th>scheduler</th>" in page and page.count("<tr") == 5 and page.count("font-weight:bold") == 1
    assert "half a win" in page


# ---------------------------------------------------------------------------------------------------------------
# widget
# ---------------------------------------------------------------------------------------------------------------


def test_parse_pair_key():
    expected = {"a": "left", "1": "left", " D ": "right", "2": "right", "s": "tie", "=": "tie", "x": "skip"}
    assert {k: parse_pair_key(k) for k in expected} == expected
    assert parse_pair_key("q") is None and parse_pair_key("") is None


def test_widget_buttons_save_at_once(run_dir):
    w = pairwise_session(run_dir)
    assert w.rater == "" and w.current is None and all(b.disabled for b in w.buttons.values())
    w.buttons["left"].click()  # no rater: nothing saved
    assert PairwiseStore(run_dir).records() == [] and "name" in w.status_html.value

    w.rater_box.value = "alice"
    first = w.current
    assert first == w.pairs[0] and w.remaining == 6
    shown = [box.children[1].value for box in w.image_area.children]
    assert shown == [(run_dir / first.left.path).read_bytes(), (run_dir / first.right.path).read_bytes()]
    w.buttons["right"].click()
    records = PairwiseStore(run_dir).records()
    assert [(r["left"], r["right"], r["choice"]) for r in records] == [(first.left.path, first.right.path, "right")]
    second = w.current
    w.buttons["tie"].click()
    assert PairwiseStore(run_dir).records()[-1]["choice"] == "tie" and w.current not in (first, second)
    third = w.current
    w.skip_button.click()
    assert len(PairwiseStore(run_dir).records()) == 2 and w.current != third
    while w.current is not None:
        w.buttons["left"].click()
    assert w.remaining == 0 and "all 6 pairs judged" in w.status_html.value and w.progress.value == 6
    assert {pair_key(r["left"], r["right"]) for r in PairwiseStore(run_dir).records()} == {p.key for p in w.pairs}


def test_widget_key_box(run_dir):
    w = pairwise_session(run_dir, rater="bob")
    for key, choice in (("a", "left"), ("2", "right"), ("=", "tie")):
        pair = w.current
        w.key_box.value = key
        assert w.key_box.value == ""
        assert PairwiseStore(run_dir).latest()[("bob", pair.key)]["choice"] == choice
    pair = w.current
    w.key_box.value = "x"  # skip
    assert w.current != pair and len(PairwiseStore(run_dir).records()) == 3
    w.key_box.value = "?"
    assert "unknown key" in w.status_html.value and len(PairwiseStore(run_dir).records()) == 3


def test_widget_is_blind_and_sized(tmp_path):
    run = make_run(tmp_path / "run", size=24)
    w = pairwise_session(run, rater="alice")
    text = w.status_html.value + "".join(box.children[0].value for box in w.image_area.children)
    assert "500" not in text and "step" not in text and "validation" not in text
    assert [box.children[0].value for box in w.image_area.children] == ["<b>left</b>", "<b>right</b>"]
    assert [box.children[1].width for box in w.image_area.children] == ["24", "24"]  # the images' own size
    w = pairwise_session(run, rater="alice", display_size=100)
    assert [box.children[1].width for box in w.image_area.children] == ["100", "100"]
    big = make_run(tmp_path / "big", steps=(1, 2), seeds=(0,), size=600)
    w = pairwise_session(big, rater="alice")
    assert w.image_area.children[0].children[1].width == "512"  # capped


def _widths(w) -> list[str]:
    return [box.children[1].width for box in w.image_area.children]


@pytest.mark.parametrize("side, shown", [(64, "64"), (512, "512"), (768, "512")])
def test_widget_shows_images_at_their_own_size_at_most_512(tmp_path, side, shown):
    run = make_run(tmp_path / "run", steps=(1, 2), seeds=(0,), size=side)
    w = pairwise_session(run, rater="alice")
    assert w.display_size == 0 and _widths(w) == [shown, shown]
    assert _widths(PairwiseWidget(make_pairs(collect_items(run)), run, rater="alice")) == [shown, shown]
    assert _widths(pairwise_session(run, rater="alice", display_size=300)) == ["300", "300"]  # used as is


def test_widget_display_size_per_image(tmp_path):
    run = make_run(tmp_path / "run", steps=(1, 2), seeds=(0,), size=64)
    (run / "validation" / "step-2" / "image-00.png").write_bytes(_png((9, 9, 9), (768, 384)))
    w = pairwise_session(run, rater="alice")
    sizes = {1: "64", 2: "512"}  # each image its own size; the wide one's longer side capped at 512
    assert _widths(w) == [sizes[w.current.left.group], sizes[w.current.right.group]]
    with pytest.raises(ValueError, match="display_size"):
        pairwise_session(run, display_size=-5)


def test_widget_prefills_the_most_recent_rater(run_dir):
    assert pairwise_session(run_dir).rater_box.value == ""  # an empty store: an empty box
    store = PairwiseStore(run_dir)
    pairs = make_pairs(collect_items(run_dir))
    store.add(pairs[0].left.path, pairs[0].right.path, "alice", "left")
    store.add(pairs[1].left.path, pairs[1].right.path, "bob", "tie")
    store.add(pairs[2].left.path, pairs[2].right.path, "alice", "right")
    store.add(pairs[0].right.path, pairs[0].left.path, "bob", "left")  # bob chose last
    assert store.last_rater() == "bob"
    w = pairwise_session(run_dir)
    assert w.rater_box.value == "bob" and w.rater == "bob" and w.remaining == 4 and w.current == pairs[2]
    assert pairwise_session(run_dir, rater="carol").rater_box.value == "carol"  # an explicit rater wins
    assert pairwise_session(run_dir, rater="").rater == "bob"  # an empty name is no name
    assert PairwiseWidget(pairs, run_dir).rater == ""  # the bare widget knows no store


def test_widget_resumes_after_restart_and_keeps_raters_apart(run_dir):
    w1 = pairwise_session(run_dir, rater="alice")
    w1.buttons["left"].click()
    w1.skip_button.click()
    w1.buttons["right"].click()
    judged = {w1.pairs[0].key, w1.pairs[2].key}
    del w1  # the kernel restarts

    w2 = pairwise_session(run_dir)
    assert w2.rater_box.value == "alice"  # the most recent rater
    assert w2.current == w2.pairs[1] and w2.remaining == 4 and w2.progress.value == 2
    assert PairwiseStore(run_dir).judged_by("alice") == judged

    bob = pairwise_session(run_dir, rater="bob")
    assert bob.current == bob.pairs[0] and bob.remaining == 6
    bob.buttons["tie"].click()
    assert pairwise_session(run_dir).rater == "bob"
    w2.set_rater("bob")
    assert w2.remaining == 5 and w2.current == w2.pairs[1]


def test_widget_callback_failure_is_not_counted(run_dir):
    pairs = make_pairs(collect_items(run_dir))
    w = PairwiseWidget(pairs, run_dir, rater="alice")

    def broken(left, right, rater, choice):
        raise OSError("disk full")

    w.on_choice(broken)
    with pytest.raises(OSError):
        w.choose("left")
    assert w.current == pairs[0] and w.remaining == 6 and "disk full" in w.status_html.value and w.choices == {}
    with pytest.raises(ValueError, match="choice"):
        w.choose("skip")


def test_widget_without_pairs(tmp_path):
    w = PairwiseWidget([], tmp_path, rater="alice")
    assert w.current is None and "nothing to compare" in w.status_html.value
    assert isinstance(Pair(RatingItem("a.png", 1), RatingItem("b.png", 2)).key, tuple)
