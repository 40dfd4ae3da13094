"""Blind human rating of generated images, kept apart in three pieces that meet only in :func:`rating_session`.

* :func:`collect_items` reads the ``images.json`` records a run wrote (validation images per step, or any other
  image set laid out the same way) into :class:`RatingItem` s.
* :class:`RatingStore` is the storage: one append-only ``ratings.csv`` per run, one row per rating, written and
  ``fsync``-ed the moment the rating is given, so that a crash or a kernel restart loses nothing.
* :class:`RatingWidget` is the ipywidgets UI; it only emits ``(path, rater, value)`` to its callbacks.

:func:`summarize` and friends turn the ratings into per-group means with bootstrap confidence intervals.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

CSV_HEADER = ("time", "rater", "image", "value")
MIN_RATING = 1
MAX_RATING = 10
EXCLUDED_LABEL = "excluded (flagged by the safety checker)"
NO_RATINGS_MESSAGE = "No ratings yet: run the rating widget in Jupyter to rate the images."

RatingCallback = Callable[[str, str, int], Any]


# ----------------------------------------------------------------------------------------------------------------
# Items
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatingItem:
    """One image to rate.

    Args:
        path: POSIX path of the image relative to the run folder; the key under which ratings are stored.
        group: the value being compared (a training step, a scheduler name, ...).
        seed: the generation seed of the image, if recorded.
        excluded: ``True`` when the safety checker flagged (and blacked out) the image; it is never rated.
        meta: the top-level keys of the ``images.json`` plus the image's own record.
    """

    path: str
    group: Any
    seed: int | None = None
    excluded: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def group_sort_key(group: Any) -> tuple:
    """A sort key that orders numbers numerically, then everything else by its text (mixed types never clash)."""
    if isinstance(group, numbers.Real) and not isinstance(group, bool):
        return (0, float(group), "")
    if group is None:
        return (2, 0.0, "")
    return (1, 0.0, str(group))


def _item_sort_key(item: RatingItem) -> tuple:
    return (group_sort_key(item.group), item.path)


def _read_images_json(path: Path) -> dict[str, Any]:
    """Load and check one ``images.json``; any problem is a ``ValueError`` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read image records from {path}: {exc}") from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{path} has no 'images' list")
    for k, record in enumerate(images):
        if not isinstance(record, dict) or not isinstance(record.get("file"), str) or not record["file"]:
            raise ValueError(f"{path}: images[{k}] has no 'file' name")
    return data


def collect_items(
    run_dir: str | os.PathLike,
    pattern: str = "validation/step-*/images.json",
    group_key: str = "step",
) -> list[RatingItem]:
    """Read every ``images.json`` under ``run_dir`` matching ``pattern`` into :class:`RatingItem` s.

    Each file's top-level ``group_key`` is the group of its images; an image whose ``nsfw`` flag is ``True`` is
    marked ``excluded``. The result is sorted by group, then path.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        ValueError: an ``images.json`` is unreadable, malformed or lacks ``group_key``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    items: list[RatingItem] = []
    for json_path in sorted(run_dir.glob(pattern)):
        data = _read_images_json(json_path)
        if group_key not in data:
            raise ValueError(f"{json_path} has no {group_key!r} key to group its images by")
        top = {k: v for k, v in data.items() if k != "images"}
        folder = json_path.parent.relative_to(run_dir)
        for record in data["images"]:
            items.append(
                RatingItem(
                    path=(folder / record["file"]).as_posix(),
                    group=data[group_key],
                    seed=record.get("seed"),
                    excluded=record.get("nsfw") is True,
                    meta={**top, **record},
                )
            )
    return sorted(items, key=_item_sort_key)


# ----------------------------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------------------------


def check_rating(value: Any) -> int:
    """Return ``value`` as an ``int`` if it is an integer from 1 to 10, else raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not MIN_RATING <= value <= MAX_RATING:
        raise ValueError(f"a rating must be an integer from {MIN_RATING} to {MAX_RATING}, got {value!r}")
    return int(value)


def check_rater(rater: Any) -> str:
    """Return the rater's name stripped; it must be a non-empty single-line string."""
    if not isinstance(rater, str) or not rater.strip():
        raise ValueError(f"the rater must be a non-empty name, got {rater!r}")
    if "\n" in rater or "\r" in rater:
        raise ValueError(f"the rater's name must fit on one line, got {rater!r}")
    return rater.strip()


def _parse_row(line: str) -> dict[str, Any] | None:
    """Parse one CSV line into a rating record, or ``None`` when it is not a well-formed row."""
    try:
        fields = next(csv.reader([line]))
    except (csv.Error, StopIteration):
        return None
    if len(fields) != len(CSV_HEADER):
        return None
    time, rater, image, value = fields
    if not time or not rater.strip() or not image:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    if not MIN_RATING <= number <= MAX_RATING:
        return None
    return {"time": time, "rater": rater.strip(), "image": image, "value": number}


class RatingStore:
    """Append-only ratings of one run in ``<run_dir>/<filename>``, a CSV with the columns ``time,rater,image,value``.

    Every :meth:`add` appends one row in a single write followed by ``flush`` and ``os.fsync``; the file is never
    rewritten, so the user's rows are never lost or reordered. Reading ignores an unfinished last line (a process
    killed mid-write) and skips, with a warning, malformed lines elsewhere.
    """

    def __init__(self, run_dir: str | os.PathLike, filename: str = "ratings.csv"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / filename

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.run_dir)!r}, filename={self.path.name!r})"

    def add(self, path: str | os.PathLike, rater: str, value: int) -> dict[str, Any]:
        """Append the rating ``value`` (1-10) that ``rater`` gave the image ``path`` (relative to the run).

        Returns the record written. If the file ends in an unfinished line (an earlier write cut short: ``...,10``
        may have become ``...,1``), that partial row is removed first, with a warning: it was never complete.
        """
        value = check_rating(value)
        rater = check_rater(rater)
        image = Path(path).as_posix() if isinstance(path, os.PathLike) else str(path)
        if not image or "\n" in image or "\r" in image:
            raise ValueError(f"an image path must be a non-empty single line, got {path!r}")
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "rater": rater,
            "image": image,
            "value": value,
        }
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([record[k] for k in CSV_HEADER])
        row = buf.getvalue().encode("utf-8")
        with open(self.path, "a+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            prefix = b""
            if size == 0:
                prefix = (",".join(CSV_HEADER) + "\n").encode("utf-8")
            else:
                fh.seek(max(0, size - 4096))
                tail = fh.read()
                if not tail.endswith(b"\n"):  # a write cut short: drop the partial row, never complete it
                    keep = size - (len(tail) - tail.rfind(b"\n") - 1) if b"\n" in tail else 0
                    warnings.warn(
                        f"{self.path}: removing an unfinished last line {tail[keep - size:][:80]!r}", stacklevel=2
                    )
                    os.ftruncate(fh.fileno(), keep)
                    if keep == 0:
                        prefix = (",".join(CSV_HEADER) + "\n").encode("utf-8")
            fh.write(prefix + row)
            fh.flush()
            os.fsync(fh.fileno())
        return record

    def records(self) -> list[dict[str, Any]]:
        """All ratings in file order as dicts with the keys ``time``, ``rater``, ``image`` and ``value`` (int).

        A missing file has no records. An unfinished last line (no newline: a write cut short) is never counted;
        any other malformed line is skipped with a warning that names its line number.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.decode("utf-8", errors="replace").split("\n")
        unfinished = lines.pop()  # "" when the file ends with a newline
        out: list[dict[str, Any]] = []
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\r")
            if not line.strip() or (number == 1 and tuple(line.split(",")) == CSV_HEADER):
                continue
            record = _parse_row(line)
            if record is None:
                warnings.warn(f"{self.path}: skipping malformed line {number}: {line[:80]!r}", stacklevel=2)
            else:
                out.append(record)
        if unfinished.strip() and _parse_row(unfinished.rstrip("\r")) is not None:
            # every add() writes its row and newline in one write, so a last line without its newline is a
            # write that was cut short: "...,10" may have become "...,1". It is not counted.
            warnings.warn(f"{self.path}: ignoring the unfinished last line {unfinished[:80]!r}", stacklevel=2)
        return out

    def latest(self) -> dict[tuple[str, str], int]:
        """``(rater, image) -> value`` of each rater's last rating of each image (a re-rating replaces)."""
        return {(r["rater"], r["image"]): r["value"] for r in self.records()}

    def rated_by(self, rater: str) -> set[str]:
        """The images ``rater`` has rated (an empty set for an empty name)."""
        name = rater.strip() if isinstance(rater, str) else ""
        return {image for (who, image) in self.latest() if who == name} if name else set()

    def raters(self) -> list[str]:
        """The names of everyone who rated, sorted."""
        return sorted({r["rater"] for r in self.records()})


# ----------------------------------------------------------------------------------------------------------------
# Widget
# ----------------------------------------------------------------------------------------------------------------

_ACTIVE_BORDER = "4px solid #e67e22"
_IDLE_BORDER = "4px solid transparent"


def _parse_key(text: str) -> int | str | None:
    """Map what was typed in the key box to a rating, ``"skip"``, or ``None`` when it means nothing."""
    text = text.strip().lower()
    if text in ("s", "skip"):
        return "skip"
    if text.isdigit() and 0 <= int(text) <= MAX_RATING:
        return int(text) or MAX_RATING
    return None


class RatingWidget:
    """An ipywidgets UI that shows images and emits ratings; it knows nothing about files or storage.

    Args:
        items: the images to rate; ``excluded`` ones are only listed, never rated.
        run_dir: the folder the items' paths are relative to (images are read from there).
        rated: ``rater -> paths already rated``; called when the rater's name changes so that rating resumes at
            that rater's first unrated image.
        blind: shuffle the order with ``seed`` and hide the group until :meth:`unblind` (or "Show step").
        seed: the seed of the blind order (``numpy.random.default_rng(seed).permutation``).
        mode: ``"image"`` shows one image at a time; ``"grid"`` shows all images of one group side by side,
            the active one highlighted (ratings stay per image).
        image_width: display width of each image in pixels.
        group_label: what a group is called ("step", "scheduler", ...).

    Register callbacks with :meth:`on_rating`; each rating calls them as ``callback(path, rater, value)``.
    """

    def __init__(
        self,
        items: Iterable[RatingItem],
        run_dir: str | os.PathLike,
        rated: Callable[[str], set[str]] = lambda rater: set(),
        blind: bool = True,
        seed: int = 0,
        mode: str = "image",
        image_width: int = 256,
        group_label: str = "step",
    ):
        import ipywidgets as widgets

        if mode not in ("image", "grid"):
            raise ValueError(f"mode must be 'image' or 'grid', got {mode!r}")
        self.run_dir = Path(run_dir)
        self.mode = mode
        self.seed = seed
        self.image_width = image_width
        self.group_label = group_label
        self._rated_source = rated
        self._callbacks: list[RatingCallback] = []
        self.ratings: dict[tuple[str, str], int] = {}  # this session's ratings, (rater, path) -> value

        unique: dict[str, RatingItem] = {}
        for item in items:
            unique.setdefault(item.path, item)
        self.excluded: list[RatingItem] = sorted((i for i in unique.values() if i.excluded), key=_item_sort_key)
        queue = sorted((i for i in unique.values() if not i.excluded), key=_item_sort_key)
        self._order: list[RatingItem] = self._make_order(queue, blind, seed, mode)
        self._blind = blind
        self._rater = ""
        self._rated: set[str] = set()
        self._pos: int | None = 0 if self._order else None
        self._history: list[int] = []
        self._message = ""
        self._tiles: dict[str, Any] = {}
        self._page_key: Any = object()

        self.rater_box = widgets.Text(description="Rater", placeholder="your name")
        self.blind_toggle = widgets.ToggleButton(value=not blind, description=f"Show {group_label}")
        self.group_html = widgets.HTML()
        self.image_area = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.buttons = [
            widgets.Button(description=str(v), layout=widgets.Layout(width="3.2em")) for v in range(1, 11)
        ]
        self.skip_button = widgets.Button(description="Skip", tooltip="next image, no rating")
        self.back_button = widgets.Button(description="Back", tooltip="previous image (to correct a rating)")
        self.key_box = widgets.Text(
            continuous_update=False,
            placeholder="1-9, 10 or 0 (=10), s = skip; Enter",
            description="Key",
        )
        self.progress = widgets.IntProgress(min=0, max=max(1, len(self._order)), value=0)
        self.status_html = widgets.HTML()
        self.excluded_html = widgets.HTML(self._excluded_text())
        self.excluded_box = widgets.Accordion(children=[self.excluded_html])
        self.excluded_box.set_title(0, f"{EXCLUDED_LABEL}: {len(self.excluded)}")
        self._widget = widgets.VBox(
            [
                widgets.HBox([self.rater_box, self.blind_toggle]),
                self.group_html,
                self.image_area,
                widgets.HBox(self.buttons),
                widgets.HBox([self.back_button, self.skip_button, self.key_box]),
                widgets.HBox([self.progress, self.status_html]),
                self.excluded_box,
            ]
        )

        for v, button in enumerate(self.buttons, start=1):
            button.on_click(lambda _b, v=v: self.rate(v))
        self.skip_button.on_click(lambda _b: self.skip())
        self.back_button.on_click(lambda _b: self.back())
        self.rater_box.observe(self._on_rater, names="value")
        self.key_box.observe(self._on_key, names="value")
        self.blind_toggle.observe(self._on_toggle, names="value")
        self._refresh()

    # -- order -----------------------------------------------------------------------------------------------

    @staticmethod
    def _make_order(queue: list[RatingItem], blind: bool, seed: int, mode: str) -> list[RatingItem]:
        """The rating order: shuffled when blind, and in grid mode grouped page by page."""
        if mode == "image":
            if not blind:
                return list(queue)
            return [queue[k] for k in np.random.default_rng(seed).permutation(len(queue))]
        groups: dict[Any, list[RatingItem]] = {}
        for item in queue:
            groups.setdefault(item.group, []).append(item)
        pages = list(groups.values())
        if not blind:
            return [item for page in pages for item in page]
        rng = np.random.default_rng(seed)
        order: list[RatingItem] = []
        for g in rng.permutation(len(pages)):
            page = pages[g]
            order.extend(page[k] for k in rng.permutation(len(page)))
        return order

    @property
    def order(self) -> list[RatingItem]:
        """The rateable items in the order they are shown."""
        return list(self._order)

    @property
    def rater(self) -> str:
        """The current rater's name (stripped; empty until entered)."""
        return self._rater

    @property
    def current(self) -> RatingItem | None:
        """The item being rated, or ``None`` when everything is rated (or there is nothing to rate)."""
        return None if self._pos is None else self._order[self._pos]

    @property
    def remaining(self) -> int:
        """How many rateable items the current rater has not rated yet."""
        return sum(1 for item in self._order if item.path not in self._rated)

    @property
    def blind(self) -> bool:
        """Whether the group is hidden."""
        return self._blind

    @property
    def widget(self):
        """The top-level ``VBox`` to display."""
        return self._widget

    def _next_unrated(self, start: int, include_start: bool = False) -> int | None:
        """The position of the first unrated item after ``start`` (wrapping around), or ``None``."""
        n = len(self._order)
        offsets = range(0 if include_start else 1, n + 1)
        for off in offsets:
            pos = (start + off) % n
            if self._order[pos].path not in self._rated:
                return pos
        return None

    def _move(self, pos: int | None) -> None:
        if self._pos is not None and pos != self._pos:
            self._history.append(self._pos)
        self._pos = pos

    # -- actions ---------------------------------------------------------------------------------------------

    def on_rating(self, callback: RatingCallback) -> None:
        """Call ``callback(path, rater, value)`` for every rating given from now on."""
        self._callbacks.append(callback)

    def set_rater(self, name: str) -> None:
        """Switch to rater ``name`` (same as typing it in the rater box)."""
        self.rater_box.value = name

    def rate(self, value: int) -> None:
        """Give the current item ``value``, emit it to the callbacks and move on to the next unrated item."""
        value = check_rating(value)
        if not self._rater:
            self._message = "Enter your name in the Rater box first."
        elif self._pos is None:
            self._message = "Nothing left to rate."
        else:
            item = self._order[self._pos]
            try:
                for callback in self._callbacks:
                    callback(item.path, self._rater, value)
            except Exception as exc:
                self._message = f"<span style='color:#c0392b'>rating not saved: {html.escape(str(exc))}</span>"
                self._refresh()
                raise
            self.ratings[(self._rater, item.path)] = value
            self._rated.add(item.path)
            self._move(self._next_unrated(self._pos))
            self._message = f"saved {value}"
        self._refresh()

    def skip(self) -> None:
        """Move to the next unrated item without rating the current one."""
        if self._pos is not None:
            nxt = self._next_unrated(self._pos)
            if nxt is None or nxt == self._pos:
                self._message = "no other image left to rate"
            else:
                self._move(nxt)
                self._message = "skipped"
        self._refresh()

    def back(self) -> None:
        """Return to the previously shown item (rated or not), e.g. to correct a rating."""
        if self._history:
            self._pos = self._history.pop()
            self._message = "back"
        else:
            self._message = "nothing to go back to"
        self._refresh()

    def unblind(self) -> None:
        """Show the group of each item (same as pressing the "Show step" toggle)."""
        self.blind_toggle.value = True

    # -- observers -------------------------------------------------------------------------------------------

    def _on_rater(self, change: dict) -> None:
        name = (change["new"] or "").strip()
        self._rater = name
        self._history.clear()
        if not name:
            self._rated = set()
            self._message = ""
        else:
            session = {path for (who, path) in self.ratings if who == name}
            self._rated = set(self._rated_source(name)) | session
            self._message = f"welcome {html.escape(name)}"
        self._pos = self._next_unrated(0, include_start=True) if self._order else None
        self._refresh()

    def _on_key(self, change: dict) -> None:
        text = change["new"]
        if not text.strip():
            return
        key = _parse_key(text)
        self.key_box.value = ""
        if key == "skip":
            self.skip()
        elif key is None:
            self._message = f"<span style='color:#c0392b'>unknown key {html.escape(text)!r}: type 1-10, 0 or s</span>"
            self._refresh()
        else:
            self.rate(key)

    def _on_toggle(self, change: dict) -> None:
        self._blind = not change["new"]
        self._refresh()

    # -- display ---------------------------------------------------------------------------------------------

    def _excluded_text(self) -> str:
        if not self.excluded:
            return "<i>none</i>"
        rows = "".join(f"<li><code>{html.escape(i.path)}</code></li>" for i in self.excluded)
        return f"<ul>{rows}</ul>"

    def _tile(self, item: RatingItem):
        """A cached ``VBox(image, caption)`` for ``item``; a missing file shows an error instead of the image."""
        import ipywidgets as widgets

        if item.path not in self._tiles:
            try:
                body = widgets.Image(
                    value=(self.run_dir / item.path).read_bytes(), format="png", width=self.image_width
                )
            except OSError as exc:
                body = widgets.HTML(f"<span style='color:#c0392b'>cannot read image: {html.escape(str(exc))}</span>")
            self._tiles[item.path] = widgets.VBox([body, widgets.HTML()], layout=widgets.Layout(border=_IDLE_BORDER))
        return self._tiles[item.path]

    def _page(self) -> list[RatingItem]:
        item = self.current
        if item is None:
            return []
        if self.mode == "image":
            return [item]
        return [i for i in self._order if i.group == item.group]

    def _refresh(self) -> None:
        """Bring every widget in line with the state."""
        item = self.current
        page = self._page()
        page_key = (item.group if self.mode == "grid" else item.path) if item is not None else None
        if page_key != self._page_key:
            self._tiles = {}
            self._page_key = page_key
        tiles = [self._tile(i) for i in page]
        for i, tile in zip(page, tiles):
            tile.layout.border = _ACTIVE_BORDER if i is item and self.mode == "grid" else _IDLE_BORDER
            caption = ""
            if self.mode == "grid":
                mark = "&#9654; " if i is item else ""
                given = self.ratings.get((self._rater, i.path))
                done = f" &#10003; {given}" if given is not None else (" &#10003;" if i.path in self._rated else "")
                caption = f"{mark}#{page.index(i) + 1}{done}"
            tile.children[1].value = caption
        self.image_area.children = tiles

        if item is None:
            self.group_html.value = ""
        elif self._blind:
            self.group_html.value = f"<b>{html.escape(self.group_label)}</b>: hidden (blind rating)"
        else:
            self.group_html.value = (
                f"<b>{html.escape(self.group_label)}</b>: {html.escape(str(item.group))}"
                f" &middot; <code>{html.escape(item.path)}</code>"
            )

        can_rate = bool(self._rater) and item is not None
        for button in self.buttons:
            button.disabled = not can_rate
        self.skip_button.disabled = not can_rate
        self.back_button.disabled = not self._history
        self.key_box.disabled = not can_rate

        n = len(self._order)
        remaining = self.remaining
        self.progress.value = n - remaining if self._rater else 0
        if not self._order:
            text = "nothing to rate"
        elif not self._rater:
            text = "Enter your name in the Rater box to start rating."
        elif item is None:
            text = f"all {n} images rated"
        else:
            text = f"{html.escape(self._rater)}: {n - remaining}/{n} rated, {remaining} remaining"
            if item.path in self._rated:
                given = self.ratings.get((self._rater, item.path))
                text += f" (this one already rated{f': {given}' if given is not None else ''})"
        if self.excluded:
            text += f"; {len(self.excluded)} {EXCLUDED_LABEL}"
        if self._message:
            text += f" &mdash; {self._message}"
        self.status_html.value = text

    def _repr_mimebundle_(self, **kwargs):
        return self._widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._widget)


def rating_session(
    run_dir: str | os.PathLike,
    items: Sequence[RatingItem] | None = None,
    store: RatingStore | None = None,
    **widget_kwargs: Any,
) -> RatingWidget:
    """A :class:`RatingWidget` over ``items`` (default: the run's validation images) saving into ``store``
    (default: ``RatingStore(run_dir)``); a new session after a kernel restart resumes where the rater stopped."""
    store = RatingStore(run_dir) if store is None else store
    items = collect_items(run_dir) if items is None else items
    widget = RatingWidget(items, run_dir, rated=store.rated_by, **widget_kwargs)
    widget.on_rating(store.add)
    return widget


# ----------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class GroupSummary:
    """The ratings of one group pooled over raters and images.

    ``std`` is the sample standard deviation (``ddof=1``, ``nan`` for fewer than two ratings); ``ci_low`` and
    ``ci_high`` bound a percentile-bootstrap confidence interval of the mean at level ``confidence``;
    ``n_excluded`` counts the group's images flagged by the safety checker.
    """

    group: Any
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n_excluded: int = 0
    confidence: float = 0.95


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values`` (``numpy.random.default_rng(seed)``).

    One value gives ``(v, v)``, none gives ``(nan, nan)``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // x.size)  # bound the memory of the resample index matrix
    means = np.concatenate(
        [
            x[rng.integers(0, x.size, size=(min(chunk, n_resamples - start), x.size))].mean(axis=1)
            for start in range(0, n_resamples, chunk)
        ]
    )
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return (float(low), float(high))


def _latest_ratings(
    ratings: Mapping[tuple[str, str], int] | Iterable[Mapping[str, Any]],
) -> dict[tuple[str, str], float]:
    """Normalise a ``(rater, path) -> value`` dict or a list of store records (the last rating wins)."""
    if isinstance(ratings, Mapping):
        return {(str(r), str(p)): float(v) for (r, p), v in ratings.items()}
    return {(str(rec["rater"]), str(rec["image"])): float(rec["value"]) for rec in ratings}


def summarize(
    items: Iterable[RatingItem],
    ratings: Mapping[tuple[str, str], int] | Iterable[Mapping[str, Any]],
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> list[GroupSummary]:
    """Per-group statistics of ``ratings`` (``store.latest()`` or ``store.records()``) over ``items``, sorted by group.

    Ratings are pooled over raters and images; ratings of excluded images or of paths not among ``items`` are
    ignored. Every group of ``items`` appears, with ``n=0`` when nobody rated it.
    """
    items = list(items)
    groups: dict[Any, list[RatingItem]] = {}
    for item in sorted(items, key=_item_sort_key):
        groups.setdefault(item.group, []).append(item)
    latest = _latest_ratings(ratings)
    by_path: dict[str, list[float]] = {}
    for (_rater, path), value in latest.items():
        by_path.setdefault(path, []).append(value)
    out: list[GroupSummary] = []
    for group, members in groups.items():
        values = [v for i in members if not i.excluded for v in by_path.get(i.path, [])]
        x = np.asarray(values, dtype=float)
        low, high = bootstrap_ci(x, confidence=confidence, n_resamples=n_resamples, seed=seed)
        out.append(
            GroupSummary(
                group=group,
                n=int(x.size),
                mean=float(x.mean()) if x.size else math.nan,
                std=float(x.std(ddof=1)) if x.size > 1 else math.nan,
                ci_low=low,
                ci_high=high,
                n_excluded=sum(1 for i in members if i.excluded),
                confidence=confidence,
            )
        )
    return out


def best_group(summaries: Iterable[GroupSummary]) -> GroupSummary | None:
    """The group with the highest mean among those with ratings (ties go to the earlier group); ``None`` if none."""
    best: GroupSummary | None = None
    for s in summaries:
        if s.n > 0 and (best is None or s.mean > best.mean):
            best = s
    return best


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _ci_label(summaries: Sequence[GroupSummary]) -> str:
    level = summaries[0].confidence if summaries else 0.95
    return f"{100 * level:g}% CI"


def _rows(summaries: Sequence[GroupSummary]) -> list[list[str]]:
    return [
        [
            str(s.group),
            str(s.n),
            _fmt(s.mean),
            _fmt(s.std),
            f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]" if s.n else "n/a",
            str(s.n_excluded),
        ]
        for s in summaries
    ]


def summary_table(summaries: Sequence[GroupSummary], group_label: str = "step") -> str:
    """The summaries as a markdown table (the best group marked with ``*``)."""
    summaries = list(summaries)
    best = best_group(summaries)
    header = [group_label, "n", "mean", "std", _ci_label(summaries), "excluded"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for s, row in zip(summaries, _rows(summaries)):
        if s is best:
            row[0] = f"**{row[0]}** *"
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def summary_html(summaries: Sequence[GroupSummary], group_label: str = "step") -> str:
    """The summaries as a plain HTML table for notebooks (the best group in bold), preceded by the message."""
    summaries = list(summaries)
    best = best_group(summaries)
    header = [group_label, "n", "mean", "std", _ci_label(summaries), "excluded"]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for s, row in zip(summaries, _rows(summaries)):
        style = " style='font-weight:bold'" if s is best else ""
        cells = "".join(f"<td style='text-align:right'>{html.escape(c)}</td>" for c in row)
        body.append(f"<tr{style}>{cells}</tr>")
    message = html.escape(summary_message(summaries, group_label=group_label))
    return f"<p>{message}</p><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def summary_message(summaries: Iterable[GroupSummary], group_label: str = "step") -> str:
    """One sentence naming the best group, or :data:`NO_RATINGS_MESSAGE` when nothing is rated yet."""
    summaries = list(summaries)
    best = best_group(summaries)
    if best is None:
        return NO_RATINGS_MESSAGE
    return (
        f"Best {group_label}: {best.group} (mean {best.mean:.2f}, {_ci_label(summaries)} "
        f"[{best.ci_low:.2f}, {best.ci_high:.2f}], n={best.n})"
    )


def write_summary_csv(summaries: Sequence[GroupSummary], path: str | os.PathLike, group_label: str = "step"):
    """The per-group table (mean, std, n, CI, excluded) as CSV, written atomically; returns the path."""
    from .utils import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([group_label, "n", "mean", "std", "ci_low", "ci_high", "confidence", "n_excluded"])
    for s in summaries:
        writer.writerow([s.group, s.n, s.mean, s.std, s.ci_low, s.ci_high, s.confidence, s.n_excluded])
    return atomic_write_text(path, buf.getvalue())
