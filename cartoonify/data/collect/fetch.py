"""Downloads: http(s) only, with a timeout, a size cap, a redirect limit and bounded retries; the
originals are kept by content hash with an index of which URL gave which."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .decode import FORMAT_EXTENSIONS, SNIFF_BYTES, describe_bytes, sniff_image
from .errors import FetchError, Reject
from .manifest import write_if_changed, write_output
from .sources import URL_SCHEMES

USER_AGENT = "Mozilla/5.0 (compatible; cartoonify-collect/0.1)"
URL_INDEX_NAME = "urls.json"

Fetch = Callable[[str], bytes]


class _LimitedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows at most ``max_redirects`` redirects, and only to http(s) URLs."""

    def __init__(self, max_redirects: int):
        super().__init__()
        self.max_redirects = max_redirects
        self.max_redirections = max_redirects + 1  # urllib's own loop guard stays out of the way

    @staticmethod
    def _refuse_scheme(fp, url: str) -> None:
        """Raise :class:`FetchError` (closing the response) for a URL that is not http(s)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme and scheme not in URL_SCHEMES:
            fp.close()
            raise FetchError(f"redirect to a {scheme} URL is not allowed: {url}")

    def http_error_302(self, req, fp, code, msg, headers):
        """Refuse a redirect to a non-http(s) scheme before urllib looks at it."""
        self._refuse_scheme(fp, headers.get("location") or headers.get("uri") or "")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        """The next request of a redirect, counted; past ``max_redirects`` a :class:`FetchError`."""
        count = getattr(req, "redirect_count", 0) + 1
        self._refuse_scheme(fp, newurl)
        if count > self.max_redirects:
            fp.close()
            raise FetchError(f"more than {self.max_redirects} redirects")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.redirect_count = count
        return new


def _read_capped(resp, max_bytes: int, deadline: float) -> bytes:
    """The response body, refusing more than ``max_bytes`` or a transfer past ``deadline``."""
    declared = resp.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise FetchError(f"too large: the server declares {int(declared)} bytes (cap {max_bytes})")
    chunks, total = [], 0
    while True:
        chunk = resp.read(min(1 << 16, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise FetchError(f"too large: more than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchError("timed out while reading the body", transient=True)


def fetch_url(url: str, timeout: float = 10, max_bytes: int = 30_000_000, max_redirects: int = 3) -> bytes:
    """Download ``url`` (http/https only) with a timeout per connect and read (and ``10 * timeout`` for
    the whole body), a size cap and a redirect limit. Raises :class:`FetchError`."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise FetchError(f"unsupported URL scheme {scheme!r} (http and https only)")
    opener = urllib.request.build_opener(_LimitedRedirects(max_redirects))
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    deadline = time.monotonic() + 10 * timeout
    try:
        with opener.open(request, timeout=timeout) as resp:
            return _read_capped(resp, max_bytes, deadline)
    except FetchError:
        raise
    except urllib.error.HTTPError as err:
        err.close()
        transient = err.code >= 500 or err.code in (408, 429)
        raise FetchError(f"HTTP {err.code} {err.reason}", transient=transient) from err
    except urllib.error.URLError as err:
        raise FetchError(f"cannot reach the server: {err.reason}", transient=True) from err
    except TimeoutError as err:
        raise FetchError("timed out", transient=True) from err
    except (OSError, ValueError) as err:  # connection resets, bad status lines, malformed URLs
        raise FetchError(f"download failed: {type(err).__name__}: {err}", transient=isinstance(err, OSError)) from err
    except Exception as err:  # http.client.HTTPException (IncompleteRead, ...) and the like
        raise FetchError(f"download failed: {type(err).__name__}: {err}", transient=True) from err


def make_fetcher(timeout: float = 10, max_bytes: int = 30_000_000, max_redirects: int = 3) -> Fetch:
    """A ``fetch(url) -> bytes`` function: :func:`fetch_url` with these limits."""

    def fetch_with_limits(url: str) -> bytes:
        return fetch_url(url, timeout=timeout, max_bytes=max_bytes, max_redirects=max_redirects)

    return fetch_with_limits


def download(url: str, fetch: Fetch, retries: int, wait: float) -> bytes:
    """``fetch(url)`` with up to ``retries`` more attempts after transient errors (waits double)."""
    for attempt in range(retries + 1):
        try:
            return fetch(url)
        except Exception as err:
            transient = getattr(err, "transient", isinstance(err, OSError))
            if not transient or attempt == retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise Reject("download failed", f"download failed{tries}: {err}") from err
            time.sleep(wait * 2**attempt)
    raise AssertionError("unreachable")


class Originals:
    """The downloaded originals under ``out_dir/originals``: ``<sha256><ext>`` files and the index
    ``urls.json`` of which URL gave which file, so that a rerun downloads nothing twice."""

    def __init__(self, out_dir: Path, fetch: Fetch, retries: int, retry_wait: float, max_bytes: int):
        self.out_dir, self.fetch = out_dir, fetch
        self.retries, self.retry_wait, self.max_bytes = retries, retry_wait, max_bytes
        self.index = self._load_index()

    @property
    def folder(self) -> Path:
        """``out_dir/originals``."""
        return self.out_dir / "originals"

    def _load_index(self) -> dict[str, str]:
        """The URL -> original index of earlier runs (empty if there is none or it is unreadable)."""
        try:
            data = json.loads((self.folder / URL_INDEX_NAME).read_text(encoding="utf-8"))
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, url: str) -> Path:
        """The local original of ``url``, downloaded unless an earlier run did.

        The bytes must be an image by their magic number; the file is named ``<sha256><ext>`` after
        what the bytes are. Failures raise :class:`Reject` with the verdict's code and reason.
        """
        scheme = urlsplit(url).scheme.lower()
        if scheme not in URL_SCHEMES:
            raise Reject("bad url", f"unsupported URL scheme {scheme!r} (http and https only)")
        known = self.index.get(url)
        if known and (self.out_dir / known).is_file():
            return self.out_dir / known
        data = download(url, self.fetch, self.retries, self.retry_wait)
        if len(data) > self.max_bytes:
            raise Reject("download failed", f"too large: {len(data)} bytes (cap {self.max_bytes})")
        kind = sniff_image(data[:SNIFF_BYTES])
        if kind is None:
            what = describe_bytes(data[:SNIFF_BYTES])
            code = "svg" if what == "SVG" else "not an image"
            raise Reject(code, f"not an image: the URL returned {what} ({len(data)} bytes)")
        name = hashlib.sha256(data).hexdigest() + FORMAT_EXTENSIONS[kind]
        path = self.folder / name
        if not path.is_file():
            write_output(path, data)
        self.index[url] = f"originals/{name}"
        return path

    def save_index(self) -> Path | None:
        """Write ``originals/urls.json`` (unless unchanged); None when no URL was ever seen."""
        if not self.index:
            return None
        text = json.dumps(dict(sorted(self.index.items())), indent=2) + "\n"
        return write_if_changed(self.folder / URL_INDEX_NAME, text.encode("utf-8"))
