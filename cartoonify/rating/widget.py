"""The rating UI: :class:`RatingWidget` shows images and emits ratings; :func:`rating_session` wires it to a store.

The widget knows nothing about files or storage: it only calls its callbacks with ``(path, rater, value)``.
ipywidgets is imported when a widget is built, so importing this module stays light.
"""

from __future__ import annotations

import html
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .items import RatingItem, collect_items, item_sort_key
from .store import MAX_RATING, RatingStore, check_rating

EXCLUDED_LABEL = "excluded (flagged by the safety checker)"

RatingCallback = Callable[[str, str, int], Any]

_ACTIVE_BORDER = "4px solid #e67e22"
_IDLE_BORDER = "4px solid transparent"
_KEY_HINT = "1-9, 10 or 0 (=10), s = skip; Enter"
MAX_DISPLAY_SIZE = 512  # the largest size an image is shown at by default (``display_size=0``)


# ----------------------------------------------------------------------------------------------------------------
# Order and keys
# ----------------------------------------------------------------------------------------------------------------


def rating_order(queue: Sequence[RatingItem], blind: bool, seed: int, mode: str) -> list[RatingItem]:
    """The order in which ``queue`` is shown: shuffled with ``seed`` when blind, and in ``"grid"`` mode page by page
    (the groups shuffled, then the images within each group)."""
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


def parse_key(text: str) -> int | str | None:
    """Map what was typed in the key box to a rating (``0`` means 10), ``"skip"``, or ``None`` when it means
    nothing."""
    text = text.strip().lower()
    if text in ("s", "skip"):
        return "skip"
    if text.isdigit() and 0 <= int(text) <= MAX_RATING:
        return int(text) or MAX_RATING
    return None


def split_items(items: Iterable[RatingItem]) -> tuple[list[RatingItem], list[RatingItem]]:
    """The rateable and the excluded items, each sorted by group and path; a repeated path keeps its first item."""
    unique: dict[str, RatingItem] = {}
    for item in items:
        unique.setdefault(item.path, item)
    ordered = sorted(unique.values(), key=item_sort_key)
    return [i for i in ordered if not i.excluded], [i for i in ordered if i.excluded]


class _Cursor:
    """Where the current rater stands in the rating order: position, images rated, and the way back."""

    def __init__(self, order: list[RatingItem]):
        self.order = order
        self.rated: set[str] = set()
        self.pos: int | None = 0 if order else None
        self.history: list[int] = []

    @property
    def current(self) -> RatingItem | None:
        return None if self.pos is None else self.order[self.pos]

    @property
    def remaining(self) -> int:
        return sum(1 for item in self.order if item.path not in self.rated)

    def restart(self, rated: set[str]) -> None:
        """A new rater: forget the way back and stand at the first item not in ``rated``."""
        self.rated = rated
        self.history.clear()
        self.pos = self.next_unrated(0, include_start=True) if self.order else None

    def next_unrated(self, start: int, include_start: bool = False) -> int | None:
        """The position of the first unrated item after ``start`` (wrapping around), or ``None``."""
        n = len(self.order)
        for off in range(0 if include_start else 1, n + 1):
            pos = (start + off) % n
            if self.order[pos].path not in self.rated:
                return pos
        return None

    def move(self, pos: int | None) -> None:
        """Go to ``pos``, remembering the position left for :meth:`back`."""
        if self.pos is not None and pos != self.pos:
            self.history.append(self.pos)
        self.pos = pos

    def advance(self) -> None:
        """Count the current item as rated and move to the next unrated one."""
        self.rated.add(self.order[self.pos].path)
        self.move(self.next_unrated(self.pos))

    def skip(self) -> bool:
        """Move to the next unrated item other than the current one; ``False`` when there is none."""
        nxt = None if self.pos is None else self.next_unrated(self.pos)
        if nxt is None or nxt == self.pos:
            return False
        self.move(nxt)
        return True

    def back(self) -> bool:
        """Return to the previously shown item; ``False`` when there is none."""
        if not self.history:
            return False
        self.pos = self.history.pop()
        return True

    def page(self, mode: str) -> list[RatingItem]:
        """The items shown with the current one: itself, or in ``"grid"`` mode its whole group."""
        item = self.current
        if item is None:
            return []
        return [item] if mode == "image" else [i for i in self.order if i.group == item.group]


# ----------------------------------------------------------------------------------------------------------------
# Display
# ----------------------------------------------------------------------------------------------------------------


def _error(markup: str) -> str:
    """``markup`` (already escaped) in the colour of an error."""
    return f"<span style='color:#c0392b'>{markup}</span>"


def excluded_html(excluded: Sequence[RatingItem]) -> str:
    """The list of excluded images as HTML."""
    if not excluded:
        return "<i>none</i>"
    rows = "".join(f"<li><code>{html.escape(i.path)}</code></li>" for i in excluded)
    return f"<ul>{rows}</ul>"


def group_html(item: RatingItem | None, blind: bool, group_label: str) -> str:
    """The group line above the images: hidden while blind, else the group and the image's path."""
    if item is None:
        return ""
    label = f"<b>{html.escape(group_label)}</b>"
    if blind:
        return f"{label}: hidden (blind rating)"
    return f"{label}: {html.escape(str(item.group))} &middot; <code>{html.escape(item.path)}</code>"


def tile_caption(number: int, active: bool, given: int | None, rated: bool) -> str:
    """A grid tile's caption: the active mark, its number on the page, and a tick (with this session's rating)."""
    mark = "&#9654; " if active else ""
    done = f" &#10003; {given}" if given is not None else (" &#10003;" if rated else "")
    return f"{mark}#{number}{done}"


def status_text(
    n: int,
    remaining: int,
    rater: str,
    item: RatingItem | None,
    rated: bool = False,
    given: int | None = None,
    n_excluded: int = 0,
    message: str = "",
) -> str:
    """The status line: what to do next or how many of the ``n`` images ``rater`` has rated, whether ``item`` is
    ``rated`` already (with the rating ``given`` in this session, if any), how many images are excluded, and the
    last ``message``."""
    if not n:
        text = "nothing to rate"
    elif not rater:
        text = "Enter your name in the Rater box to start rating."
    elif item is None:
        text = f"all {n} images rated"
    else:
        text = f"{html.escape(rater)}: {n - remaining}/{n} rated, {remaining} remaining"
        if rated:
            text += f" (this one already rated{f': {given}' if given is not None else ''})"
    if n_excluded:
        text += f"; {n_excluded} {EXCLUDED_LABEL}"
    return f"{text} &mdash; {message}" if message else text


def check_display_size(display_size: Any) -> int:
    """Return ``display_size`` as an ``int`` if it is a whole number >= 0, else raise ``ValueError`` naming it."""
    if isinstance(display_size, bool) or not isinstance(display_size, numbers.Integral) or display_size < 0:
        raise ValueError(
            f"display_size must be a whole number of pixels >= 0 (0: the image's own size), got {display_size!r}"
        )
    return int(display_size)


def display_width(path: str | os.PathLike, display_size: int = 0) -> int:
    """The width in pixels to show the image at ``path`` at.

    A positive ``display_size`` is used as is. ``0`` means the image's own size, scaled down (keeping its aspect
    ratio) so that its longer side is at most :data:`MAX_DISPLAY_SIZE`: a 64 px image is shown at 64, a 512 px one
    at 512, a 768 px one at 512. The size is read from the file's header (``PIL.Image.open(path).size``, without
    decoding the pixels); a file PIL cannot read is shown at :data:`MAX_DISPLAY_SIZE`.
    """
    display_size = check_display_size(display_size)
    if display_size:
        return display_size
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError):  # missing, or not an image PIL can read
        return MAX_DISPLAY_SIZE
    longest = max(width, height, 1)
    return max(1, round(width * min(1.0, MAX_DISPLAY_SIZE / longest)))


def _tile(path: Path, display_size: int):
    """A ``VBox(image, caption)`` for the image at ``path`` shown at :func:`display_width`; a missing file shows an
    error instead."""
    import ipywidgets as widgets

    try:
        body = widgets.Image(value=path.read_bytes(), format="png", width=display_width(path, display_size))
    except OSError as exc:
        body = widgets.HTML(_error(f"cannot read image: {html.escape(str(exc))}"))
    return widgets.VBox([body, widgets.HTML()], layout=widgets.Layout(border=_IDLE_BORDER))


# ----------------------------------------------------------------------------------------------------------------
# Widget
# ----------------------------------------------------------------------------------------------------------------


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
        display_size: display width of each image in pixels; ``0`` (the default): the image's own size, at most
            :data:`MAX_DISPLAY_SIZE` (see :func:`display_width`; applied per image, also in grid mode).
        group_label: what a group is called ("step", "scheduler", ...).
        rater: the name to start with (may be empty: the rater types it in the box).

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
        display_size: int = 0,
        group_label: str = "step",
        rater: str = "",
    ):
        if mode not in ("image", "grid"):
            raise ValueError(f"mode must be 'image' or 'grid', got {mode!r}")
        self.run_dir = Path(run_dir)
        self.mode = mode
        self.seed = seed
        self.display_size = check_display_size(display_size)
        self.group_label = group_label
        self._rated_source = rated
        self._callbacks: list[RatingCallback] = []
        self.ratings: dict[tuple[str, str], int] = {}  # this session's ratings, (rater, path) -> value

        queue, self.excluded = split_items(items)
        self._order: list[RatingItem] = rating_order(queue, blind, seed, mode)
        self._cursor = _Cursor(self._order)
        self._blind = blind
        self._rater = ""
        self._message = ""
        self._tiles: dict[str, Any] = {}
        self._page_key: Any = object()
        self._widget = self._build()
        self.rater_box.value = rater or ""
        self._refresh()

    def _build(self):
        """Create the controls, connect them, and return the top-level ``VBox``."""
        import ipywidgets as widgets

        self.rater_box = widgets.Text(description="Rater", placeholder="your name")
        self.blind_toggle = widgets.ToggleButton(value=not self._blind, description=f"Show {self.group_label}")
        self.group_html = widgets.HTML()
        self.image_area = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.buttons = [widgets.Button(description=str(v), layout=widgets.Layout(width="3.2em")) for v in range(1, 11)]
        self.skip_button = widgets.Button(description="Skip", tooltip="next image, no rating")
        self.back_button = widgets.Button(description="Back", tooltip="previous image (to correct a rating)")
        self.key_box = widgets.Text(continuous_update=False, placeholder=_KEY_HINT, description="Key")
        self.progress = widgets.IntProgress(min=0, max=max(1, len(self._order)), value=0)
        self.status_html = widgets.HTML()
        self.excluded_html = widgets.HTML(excluded_html(self.excluded))
        self.excluded_box = widgets.Accordion(children=[self.excluded_html])
        self.excluded_box.set_title(0, f"{EXCLUDED_LABEL}: {len(self.excluded)}")

        for v, button in enumerate(self.buttons, start=1):
            button.on_click(lambda _b, v=v: self.rate(v))
        self.skip_button.on_click(lambda _b: self.skip())
        self.back_button.on_click(lambda _b: self.back())
        self.rater_box.observe(self._on_rater, names="value")
        self.key_box.observe(self._on_key, names="value")
        self.blind_toggle.observe(self._on_toggle, names="value")
        return widgets.VBox(
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

    # -- state -----------------------------------------------------------------------------------------------

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
        return self._cursor.current

    @property
    def remaining(self) -> int:
        """How many rateable items the current rater has not rated yet."""
        return self._cursor.remaining

    @property
    def blind(self) -> bool:
        """Whether the group is hidden."""
        return self._blind

    @property
    def widget(self):
        """The top-level ``VBox`` to display."""
        return self._widget

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
        cursor = self._cursor
        if not self._rater:
            self._message = "Enter your name in the Rater box first."
        elif cursor.pos is None:
            self._message = "Nothing left to rate."
        else:
            item = cursor.order[cursor.pos]
            try:
                for callback in self._callbacks:
                    callback(item.path, self._rater, value)
            except Exception as exc:
                self._message = _error(f"rating not saved: {html.escape(str(exc))}")
                self._refresh()
                raise
            self.ratings[(self._rater, item.path)] = value
            cursor.advance()
            self._message = f"saved {value}"
        self._refresh()

    def skip(self) -> None:
        """Move to the next unrated item without rating the current one."""
        if self._cursor.pos is not None:
            self._message = "skipped" if self._cursor.skip() else "no other image left to rate"
        self._refresh()

    def back(self) -> None:
        """Return to the previously shown item (rated or not), e.g. to correct a rating."""
        self._message = "back" if self._cursor.back() else "nothing to go back to"
        self._refresh()

    def unblind(self) -> None:
        """Show the group of each item (same as pressing the "Show step" toggle)."""
        self.blind_toggle.value = True

    # -- observers -------------------------------------------------------------------------------------------

    def _on_rater(self, change: dict) -> None:
        name = (change["new"] or "").strip()
        self._rater = name
        if not name:
            self._cursor.restart(set())
            self._message = ""
        else:
            session = {path for (who, path) in self.ratings if who == name}
            self._cursor.restart(set(self._rated_source(name)) | session)
            self._message = f"welcome {html.escape(name)}"
        self._refresh()

    def _on_key(self, change: dict) -> None:
        text = change["new"]
        if not text.strip():
            return
        key = parse_key(text)
        self.key_box.value = ""
        if key == "skip":
            self.skip()
        elif key is None:
            self._message = _error(f"unknown key {html.escape(text)!r}: type 1-10, 0 or s")
            self._refresh()
        else:
            self.rate(key)

    def _on_toggle(self, change: dict) -> None:
        self._blind = not change["new"]
        self._refresh()

    # -- display ---------------------------------------------------------------------------------------------

    def _show_page(self) -> None:
        """Show the current page's tiles (rebuilt when the page changes), highlighting and captioning in grid mode."""
        item = self.current
        page_key = (item.group if self.mode == "grid" else item.path) if item is not None else None
        if page_key != self._page_key:
            self._tiles = {}
            self._page_key = page_key
        page = self._cursor.page(self.mode)
        for i in page:
            if i.path not in self._tiles:
                self._tiles[i.path] = _tile(self.run_dir / i.path, self.display_size)
        tiles = [self._tiles[i.path] for i in page]
        grid = self.mode == "grid"
        for number, (i, tile) in enumerate(zip(page, tiles), start=1):
            tile.layout.border = _ACTIVE_BORDER if i is item and grid else _IDLE_BORDER
            given = self.ratings.get((self._rater, i.path))
            rated = i.path in self._cursor.rated
            tile.children[1].value = tile_caption(number, i is item, given, rated) if grid else ""
        self.image_area.children = tiles

    def _refresh(self) -> None:
        """Bring every widget in line with the state."""
        item = self.current
        self._show_page()
        self.group_html.value = group_html(item, self._blind, self.group_label)

        can_rate = bool(self._rater) and item is not None
        for button in [*self.buttons, self.skip_button, self.key_box]:
            button.disabled = not can_rate
        self.back_button.disabled = not self._cursor.history

        n, remaining = len(self._order), self.remaining
        self.progress.value = n - remaining if self._rater else 0
        rated = item is not None and item.path in self._cursor.rated
        given = self.ratings.get((self._rater, item.path)) if item is not None else None
        self.status_html.value = status_text(
            n, remaining, self._rater, item, rated, given, len(self.excluded), self._message
        )

    def _repr_mimebundle_(self, **kwargs):
        return self._widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._widget)


def rating_session(
    run_dir: str | os.PathLike,
    items: Sequence[RatingItem] | None = None,
    store: RatingStore | None = None,
    rater: str | None = None,
    display_size: int = 0,
    **widget_kwargs: Any,
) -> RatingWidget:
    """A :class:`RatingWidget` over ``items`` (default: the run's validation images) saving into ``store``
    (default: ``RatingStore(run_dir)``), its images shown at ``display_size`` (``0``: their own size, at most
    :data:`MAX_DISPLAY_SIZE`). The rater box holds ``rater`` or, when that is empty or ``None``, the store's most
    recent rater (:meth:`RatingStore.last_rater`), so that a new session after a kernel restart resumes where the
    rater stopped."""
    store = RatingStore(run_dir) if store is None else store
    items = collect_items(run_dir) if items is None else items
    name = rater or store.last_rater() or ""
    widget = RatingWidget(items, run_dir, rated=store.rated_by, display_size=display_size, rater=name, **widget_kwargs)
    widget.on_rating(store.add)
    return widget
