"""The ratings of a run: one append-only CSV, one row per rating, each row ``fsync``-ed as it is written."""

from __future__ import annotations

import csv
import io
import numbers
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..runs import RunLayout

CSV_HEADER = ("time", "rater", "image", "value")
MIN_RATING = 1
MAX_RATING = 10

_HEADER_LINE = (",".join(CSV_HEADER) + "\n").encode("utf-8")


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


def parse_row(line: str) -> dict[str, Any] | None:
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


def _format_row(record: dict[str, Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([record[k] for k in CSV_HEADER])
    return buf.getvalue().encode("utf-8")


class RatingStore:
    """Append-only ratings of one run in a CSV with the columns ``time,rater,image,value``.

    The file is the run's ``ratings.csv`` (:attr:`RunLayout.ratings`), or ``<run_dir>/<filename>`` when a
    ``filename`` is given. Every :meth:`add` appends one row in a single write followed by ``flush`` and
    ``os.fsync``; the file is never rewritten, so the user's rows are never lost or reordered. Reading ignores an
    unfinished last line (a process killed mid-write) and skips, with a warning, malformed lines elsewhere.
    """

    def __init__(self, run_dir: str | os.PathLike, filename: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = RunLayout(self.run_dir).ratings if filename is None else self.run_dir / filename

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
        append_row(self.path, _HEADER_LINE, _format_row(record))
        return record

    def records(self) -> list[dict[str, Any]]:
        """All ratings in file order as dicts with the keys ``time``, ``rater``, ``image`` and ``value`` (int).

        A missing file has no records. An unfinished last line (no newline: a write cut short) is never counted;
        any other malformed line is skipped with a warning that names its line number.
        """
        out, unfinished = read_rows(self.path, CSV_HEADER, parse_row)
        if unfinished.strip() and parse_row(unfinished.rstrip("\r")) is not None:
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

    def last_rater(self) -> str | None:
        """The rater of the most recent rating (the last row of the file, which is append-only), or ``None`` when
        there is none (a missing or empty file)."""
        records = self.records()
        return records[-1]["rater"] if records else None


def _drop_unfinished_line(fh, size: int, path) -> int:
    """Truncate a last line without its newline (a write cut short, never completed); returns the new size."""
    fh.seek(max(0, size - 4096))
    tail = fh.read()
    if tail.endswith(b"\n"):
        return size
    keep = size - (len(tail) - tail.rfind(b"\n") - 1) if b"\n" in tail else 0
    warnings.warn(f"{path}: removing an unfinished last line {tail[keep - size :][:80]!r}", stacklevel=4)
    os.ftruncate(fh.fileno(), keep)
    return keep


def append_row(path, header_line: bytes, row: bytes) -> None:
    """Append one CSV row to ``path`` in one write, then flush and fsync: a kill loses at most that row.

    A last line left without its newline by an earlier kill is removed first (never completed); the header
    is written first into an empty file.
    """
    with open(path, "a+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        needs_header = size == 0 or _drop_unfinished_line(fh, size, path) == 0
        fh.write((header_line if needs_header else b"") + row)
        fh.flush()
        os.fsync(fh.fileno())


def read_rows(path, header: tuple, parse) -> tuple[list[dict[str, Any]], str]:
    """The rows of an append-only CSV parsed by ``parse`` (malformed lines skipped with a warning naming their
    number), and its unfinished last line ("" when the file ends with a newline). A missing file has none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], ""
    lines = data.decode("utf-8", errors="replace").split("\n")
    unfinished = lines.pop()
    out: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line.strip() or (number == 1 and tuple(line.split(",")) == header):
            continue
        record = parse(line)
        if record is None:
            warnings.warn(f"{path}: skipping malformed line {number}: {line[:80]!r}", stacklevel=3)
        else:
            out.append(record)
    return out, unfinished
