"""The pairwise UI: :class:`PairwiseWidget` shows two images and emits choices; :func:`pairwise_session` wires it
to a :class:`PairwiseStore`.

The widget is blind: it never shows which group (step, scheduler) made an image, and which image is on the left
is drawn at random by :func:`make_pairs`. ipywidgets is imported when a widget is built, so importing this module
stays light.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .items import RatingItem, collect_items
from .pairwise import Pair, PairwiseStore, check_choice, make_pairs
from .widget import MAX_DISPLAY_SIZE, check_display_size, display_width  # noqa: F401  (MAX_DISPLAY_SIZE re-exported)

ChoiceCallback = Callable[[str, str, str, str], Any]

KEYS = {
    "left": ("a", "1", "left"),
    "right": ("d", "2", "right"),
    "tie": ("s", "=", "tie"),
    "skip": ("x", "skip"),
}
_KEY_HINT = "a/1 left, d/2 right, s/= tie, x skip; Enter"


def parse_pair_key(text: str) -> str | None:
    """Map what was typed in the key box to ``"left"``, ``"right"``, ``"tie"`` or ``"skip"`` (see :data:`KEYS`),
    or ``None`` when it means nothing."""
    text = text.strip().lower()
    return next((action for action, keys in KEYS.items() if text in keys), None)


def _image_box(path: Path, caption: str, display_size: int):
    """A ``VBox(caption, image)`` for the image at ``path`` shown at :func:`display_width`; a missing file shows an
    error instead."""
    import ipywidgets as widgets

    try:
        body = widgets.Image(value=path.read_bytes(), format="png", width=display_width(path, display_size))
    except OSError as exc:
        body = widgets.HTML(f"<span style='color:#c0392b'>cannot read image: {html.escape(str(exc))}</span>")
    return widgets.VBox([widgets.HTML(f"<b>{caption}</b>"), body])


def pair_status(n: int, remaining: int, rater: str, message: str = "") -> str:
    """The status line: what to do next, or how many of the ``n`` pairs ``rater`` has judged; then ``message``."""
    if not n:
        text = "nothing to compare"
    elif not rater:
        text = "Enter your name in the Rater box to start."
    elif not remaining:
        text = f"all {n} pairs judged"
    else:
        text = f"{html.escape(rater)}: {n - remaining}/{n} pairs judged, {remaining} remaining"
    return f"{text} &mdash; {message}" if message else text


class PairwiseWidget:
    """An ipywidgets UI that shows two images side by side and emits which one the rater prefers.

    Args:
        pairs: the pairs in the order they are shown (:func:`make_pairs`), each with its left and right image.
        run_dir: the folder the images' paths are relative to.
        judged: ``rater -> pair keys already judged``; called when the rater's name changes so that judging
            resumes at that rater's first unjudged pair.
        display_size: display width of each image in pixels; ``0`` (the default): the image's own size, at most
            :data:`MAX_DISPLAY_SIZE` (see :func:`display_width`; applied to each of the two images).
        rater: the name to start with (may be empty).

    Buttons "left", "right", "tie" and "skip"; the key box takes ``a`` or ``1`` (left), ``d`` or ``2`` (right),
    ``s`` or ``=`` (tie) and ``x`` (skip), each followed by Enter. Register callbacks with :meth:`on_choice`;
    each choice calls them as ``callback(left_path, right_path, rater, choice)``.
    """

    def __init__(
        self,
        pairs: Iterable[Pair],
        run_dir: str | os.PathLike,
        judged: Callable[[str], set[tuple[str, str]]] = lambda rater: set(),
        display_size: int = 0,
        rater: str = "",
    ):
        self.run_dir = Path(run_dir)
        self.display_size = check_display_size(display_size)
        self._pairs: list[Pair] = list(pairs)
        self._judged_source = judged
        self._callbacks: list[ChoiceCallback] = []
        self.choices: dict[tuple[str, tuple[str, str]], str] = {}  # this session's, (rater, pair key) -> choice
        self._judged: set[tuple[str, str]] = set()
        self._pos: int | None = None
        self._rater = ""
        self._message = ""
        self._shown: Any = object()
        self._widget = self._build()
        self.rater_box.value = rater or ""
        self._refresh()

    def _build(self):
        """Create the controls, connect them, and return the top-level ``VBox``."""
        import ipywidgets as widgets

        self.rater_box = widgets.Text(description="Rater", placeholder="your name")
        self.image_area = widgets.HBox()
        self.buttons = {c: widgets.Button(description=c) for c in ("left", "tie", "right")}
        self.skip_button = widgets.Button(description="skip", tooltip="next pair, no choice")
        self.key_box = widgets.Text(continuous_update=False, placeholder=_KEY_HINT, description="Key")
        self.progress = widgets.IntProgress(min=0, max=max(1, len(self._pairs)), value=0)
        self.status_html = widgets.HTML()
        for choice, button in self.buttons.items():
            button.on_click(lambda _b, c=choice: self.choose(c))
        self.skip_button.on_click(lambda _b: self.skip())
        self.rater_box.observe(self._on_rater, names="value")
        self.key_box.observe(self._on_key, names="value")
        return widgets.VBox(
            [
                self.rater_box,
                self.image_area,
                widgets.HBox([*self.buttons.values(), self.skip_button, self.key_box]),
                widgets.HBox([self.progress, self.status_html]),
            ]
        )

    # -- state -----------------------------------------------------------------------------------------------

    @property
    def pairs(self) -> list[Pair]:
        """The pairs in the order they are shown."""
        return list(self._pairs)

    @property
    def rater(self) -> str:
        """The current rater's name (stripped; empty until entered)."""
        return self._rater

    @property
    def current(self) -> Pair | None:
        """The pair being judged, or ``None`` when every pair is judged (or there is no rater or no pair)."""
        return None if self._pos is None or not self._rater else self._pairs[self._pos]

    @property
    def remaining(self) -> int:
        """How many pairs the current rater has not judged yet."""
        return sum(1 for p in self._pairs if p.key not in self._judged)

    @property
    def widget(self):
        """The top-level ``VBox`` to display."""
        return self._widget

    def _next_unjudged(self, start: int, include_start: bool) -> int | None:
        """The position of the first unjudged pair from ``start`` on (wrapping around), or ``None``."""
        n = len(self._pairs)
        for off in range(0 if include_start else 1, n + 1):
            pos = (start + off) % n
            if self._pairs[pos].key not in self._judged:
                return pos
        return None

    # -- actions ---------------------------------------------------------------------------------------------

    def on_choice(self, callback: ChoiceCallback) -> None:
        """Call ``callback(left_path, right_path, rater, choice)`` for every choice made from now on."""
        self._callbacks.append(callback)

    def set_rater(self, name: str) -> None:
        """Switch to rater ``name`` (same as typing it in the rater box)."""
        self.rater_box.value = name

    def choose(self, choice: str) -> None:
        """Record ``choice`` (``"left"``, ``"right"`` or ``"tie"``) for the current pair, emit it to the callbacks
        and move on to the next unjudged pair. If a callback raises, the pair stays unjudged and the error is
        shown and re-raised."""
        choice = check_choice(choice)
        pair = self.current
        if not self._rater:
            self._message = "Enter your name in the Rater box first."
        elif pair is None:
            self._message = "Nothing left to judge."
        else:
            try:
                for callback in self._callbacks:
                    callback(pair.left.path, pair.right.path, self._rater, choice)
            except Exception as exc:
                self._message = f"<span style='color:#c0392b'>not saved: {html.escape(str(exc))}</span>"
                self._refresh()
                raise
            self.choices[(self._rater, pair.key)] = choice
            self._judged.add(pair.key)
            self._pos = self._next_unjudged(self._pos, include_start=False)
            self._message = f"saved {choice}"
        self._refresh()

    def skip(self) -> None:
        """Move to the next unjudged pair without judging the current one."""
        if self.current is not None:
            nxt = self._next_unjudged(self._pos, include_start=False)
            if nxt is None or nxt == self._pos:
                self._message = "no other pair left to judge"
            else:
                self._pos, self._message = nxt, "skipped"
        self._refresh()

    # -- observers -------------------------------------------------------------------------------------------

    def _on_rater(self, change: dict) -> None:
        name = (change["new"] or "").strip()
        self._rater = name
        session = {key for (who, key) in self.choices if who == name}
        self._judged = (set(self._judged_source(name)) | session) if name else set()
        self._pos = self._next_unjudged(0, include_start=True) if self._pairs else None
        self._message = f"welcome {html.escape(name)}" if name else ""
        self._refresh()

    def _on_key(self, change: dict) -> None:
        text = change["new"]
        if not text.strip():
            return
        action = parse_pair_key(text)
        self.key_box.value = ""
        if action == "skip":
            self.skip()
        elif action is None:
            self._message = f"<span style='color:#c0392b'>unknown key {html.escape(text)!r}: {_KEY_HINT}</span>"
            self._refresh()
        else:
            self.choose(action)

    # -- display ---------------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Bring every widget in line with the state."""
        pair = self.current
        if pair is not self._shown:
            self._shown = pair
            self.image_area.children = (
                []
                if pair is None
                else [
                    _image_box(self.run_dir / pair.left.path, "left", self.display_size),
                    _image_box(self.run_dir / pair.right.path, "right", self.display_size),
                ]
            )
        for control in [*self.buttons.values(), self.skip_button, self.key_box]:
            control.disabled = pair is None
        n, remaining = len(self._pairs), self.remaining
        self.progress.value = n - remaining if self._rater else 0
        self.status_html.value = pair_status(n, remaining if self._rater else n, self._rater, self._message)

    def _repr_mimebundle_(self, **kwargs):
        return self._widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._widget)


def pairwise_session(
    run_dir: str | os.PathLike,
    items: Sequence[RatingItem] | None = None,
    store: PairwiseStore | None = None,
    rater: str | None = None,
    by: str = "group",
    seed: int = 0,
    display_size: int = 0,
    **widget_kwargs: Any,
) -> PairwiseWidget:
    """A :class:`PairwiseWidget` over :func:`make_pairs` of ``items`` (default: the run's validation images)
    saving into ``store`` (default: ``PairwiseStore(run_dir)``), its images shown at ``display_size`` (``0``:
    their own size, at most :data:`MAX_DISPLAY_SIZE`). The rater box holds ``rater`` or, when that is empty or
    ``None``, the store's most recent rater (:meth:`PairwiseStore.last_rater`); a new session after a kernel
    restart resumes where the rater stopped."""
    store = PairwiseStore(run_dir) if store is None else store
    items = collect_items(run_dir) if items is None else items
    pairs = make_pairs(items, by=by, seed=seed)
    name = rater or store.last_rater() or ""
    widget = PairwiseWidget(
        pairs, run_dir, judged=store.judged_by, display_size=display_size, rater=name, **widget_kwargs
    )
    widget.on_choice(store.add)
    return widget
