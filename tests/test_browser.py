"""A real browser rates images in the rating notebook (03_evaluate) in JupyterLab.

The test trains a tiny run (2 checkpoints, 2 validation images each), writes a parameterised copy of
``notebooks/03_evaluate.ipynb`` next to it (papermill, not executed; interactive rating on), starts JupyterLab on
a free localhost port and drives headless Chromium (Debian's ``/usr/bin/chromium``, through playwright) to:
run all cells, type a rater name, rate one image with a button and one with the key box, find both rows in
``ratings.csv`` on disk, restart the kernel and run all cells again, and check that the widget resumes at the
first unrated image with the same rater. The browser console must stay free of errors.

Without Chromium or playwright the test is skipped (``make test`` stays green); ``.ci/run`` installs both and sets
``CARTOONIFY_REQUIRE_BROWSER=1``, which turns the skip into a failure so that CI cannot skip it silently.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("CARTOONIFY_CHROMIUM", "/usr/bin/chromium"))
ENABLE = "apt-get install chromium && pip install -e '.[browser]' (or run .ci/run); never `playwright install`"
REQUIRE_ENV = "CARTOONIFY_REQUIRE_BROWSER"  # set to 1 (as .ci/run does): missing prerequisites fail, not skip

RATER = "tester"
BUTTON_RATING = 3  # given with the "3" button
KEY_RATING = 7  # typed into the key box, then Enter

SERVER_START_S = 90  # JupyterLab answering /api/status
PAGE_LOAD_S = 90  # JupyterLab's UI loaded and the notebook open
RUN_ALL_S = 150  # a Run All on this 2-core machine: kernel start, import, scores of 4 images
ACTION_S = 30  # a click or key press answered by the kernel


def _missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed"
    return None


def _require_browser() -> None:
    reason = _missing()
    if reason is None:
        return
    message = f"browser test: {reason}; to enable it: {ENABLE}"
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{message} ({REQUIRE_ENV} is set, so the browser test must run)", pytrace=False)
    pytest.skip(message)


pytestmark = [
    pytest.mark.browser,
    # skipped at collection, before any fixture trains a run; with REQUIRE_ENV set it runs and fails in _require_browser
    pytest.mark.skipif(_missing() is not None and os.environ.get(REQUIRE_ENV, "") in ("", "0"),
                       reason=f"browser test: {_missing()}; to enable it: {ENABLE}"),
]


# ----------------------------------------------------------------------------------------------------------------
# The run and the notebook
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def rating_setup(small_config, cartoonify_home, tmp_path):
    """A tiny trained run in ``tmp_path/run`` and a parameterised (not executed) copy of 03_evaluate beside it."""
    _require_browser()
    import papermill

    from cartoonify.config import TINY_CLIP_MODEL, TINY_DINO_MODEL
    from cartoonify.notebooks import notebook_path
    from cartoonify.training.run import run_training

    config = small_config(
        max_train_steps=2,
        checkpointing_steps=1,  # checkpoints (and validation images) at steps 1 and 2
        train_batch_size=1,
        with_prior_preservation=False,
        num_class_images=0,
        use_8bit_adam=False,
        num_validation_images=2,
        validation_inference_steps=2,
        keep_resume_at_end=False,
        save_final_pipeline=False,
        report_to="none",
    )
    run_training(config, progress=False)
    run_dir = Path(config.output_dir)
    notebook = tmp_path / "03_evaluate.ipynb"
    papermill.execute_notebook(
        str(notebook_path("03_evaluate")),
        str(notebook),
        parameters={
            "run_name": run_dir.name,
            "outputs_dir": str(run_dir.parent),
            "interactive": True,  # the rating widget
            "rater": "",  # empty: the last rater of ratings.csv (nobody at first, then RATER after the restart)
            "blind": True,
            "rating_seed": 0,
            "rating_mode": "image",
            "bootstrap_resamples": 100,
            "clip_model": TINY_CLIP_MODEL,  # built by the package: nothing downloads
            "dino_model": TINY_DINO_MODEL,
            "drift_images": 0,
            "export_format": "",
        },
        prepare_only=True,
        kernel_name="python3",
        progress_bar=False,
    )
    return {"run_dir": run_dir, "notebook": notebook, "root": tmp_path}


# ----------------------------------------------------------------------------------------------------------------
# JupyterLab
# ----------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _children(pid: int) -> list[int]:
    """The ids of the processes whose parent is ``pid`` (the server's kernels), read from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its new parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_kernel(pid: int) -> bool:
    """Whether ``pid`` still runs an ipykernel (not a process that reused the id)."""
    try:
        return b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _request(url: str, token: str, method: str = "GET", timeout: float = 5) -> int:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status


def _stop(proc: subprocess.Popen, base: str, token: str) -> None:
    """Stop JupyterLab and its kernels: the server's shutdown API (it shuts its kernels down), then SIGTERM and
    SIGKILL to its process group; a kernel still running after that (kernels run in sessions of their own) is
    killed by its id."""
    kernels = _children(proc.pid)
    if proc.poll() is None:
        try:
            _request(f"{base}/api/shutdown", token, method="POST")
        except (OSError, urllib.error.URLError):
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
    deadline = time.monotonic() + 10
    while any(_alive(k) for k in kernels) and time.monotonic() < deadline:
        time.sleep(0.2)
    for k in kernels:
        if _alive(k) and _is_kernel(k):
            os.kill(k, signal.SIGKILL)


@pytest.fixture
def jupyterlab(rating_setup, tmp_path):
    """JupyterLab serving ``rating_setup['root']`` on a free localhost port, with a token and private config,
    data, settings and workspace folders; stopped (kernels included) at teardown."""
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path / "jupyter"
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    }
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",  # fail rather than move to another port
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={rating_setup['root']}",
        "--LabApp.news_url=",  # no fetch of Jupyter news (no network here; its failure would reach the console)
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = tmp_path / "jupyterlab.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(rating_setup["root"]), start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode} before answering; its log:\n{_tail(log_path)}")
            try:
                if _request(f"{base}/api/status", token) == 200:
                    break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {base} within {SERVER_START_S} s; its log:\n"
                            f"{_tail(log_path)}")
            time.sleep(0.25)
        yield {"base": base, "token": token, "log": log_path, **rating_setup}
    finally:
        _stop(proc, base, token)


# ----------------------------------------------------------------------------------------------------------------
# The browser
# ----------------------------------------------------------------------------------------------------------------


def _ratings_on_disk(run_dir: Path) -> list[tuple[str, str, int]]:
    from cartoonify.runs import RunLayout

    path = RunLayout(run_dir).ratings
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [(row["rater"], row["image"], int(row["value"])) for row in csv.DictReader(fh)]


class _Driver:
    """The page, with waits that fail with a message naming the step, the JupyterLab log and a screenshot."""

    def __init__(self, page, lab: dict, shots: Path):
        self.page, self.lab, self.shots = page, lab, shots

    def fail(self, what: str, exc: Exception | None = None) -> None:
        shot = self.shots / f"failure-{int(time.time())}.png"
        try:
            self.page.screenshot(path=str(shot), full_page=True)
        except Exception:  # noqa: BLE001 - the screenshot only helps; the failure is what matters
            shot = None
        pytest.fail(f"browser: {what}{f' ({type(exc).__name__}: {exc})' if exc else ''}\n"
                    f"screenshot: {shot}\nJupyterLab log:\n{_tail(self.lab['log'])}", pytrace=False)

    def wait(self, locator, what: str, timeout_s: float, state: str = "visible"):
        from playwright.sync_api import Error as PlaywrightError

        try:
            locator.wait_for(state=state, timeout=timeout_s * 1000)
        except PlaywrightError as exc:
            self.fail(f"{what}: not {state} within {timeout_s:.0f} s", exc)
        return locator

    def check(self, what: str, assertion, *args, timeout_s: float = ACTION_S) -> None:
        """Run a playwright ``expect(...)`` assertion (it retries until ``timeout_s``); fail naming ``what``."""
        from playwright.sync_api import Error as PlaywrightError

        try:
            assertion(*args, timeout=timeout_s * 1000)
        except (AssertionError, PlaywrightError) as exc:
            self.fail(what, exc)

    def menu(self, menu: str, item: str) -> None:
        """Click ``menu`` in the menu bar, then its entry labelled ``item``."""
        page = self.page
        title = page.locator(".lm-MenuBar-item").filter(has_text=re.compile(f"^{re.escape(menu)}$"))
        self.wait(title, f"the {menu} menu", ACTION_S).click()
        entry = page.locator(".lm-Menu .lm-Menu-item:not(.lm-mod-disabled)").filter(
            has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")))
        self.wait(entry, f"{menu} > {item}", ACTION_S).click()


def _widget(page):
    """The rating widget: the output area that holds the rater box (found by its description, "Rater")."""
    return page.locator(".jp-OutputArea-output").filter(has=page.get_by_label("Rater", exact=True))


def _tracebacks(page):
    """Cells that raised: JupyterLab shows an error's traceback as stderr."""
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                        has_text="Traceback")


def _wait_run_all(lab: _Driver, page, what: str) -> None:
    """Wait until the last code cell has run (its prompt shows an execution count), failing at once (with the
    traceback) when a cell raises."""
    done = page.locator(".jp-Notebook .jp-CodeCell").last.locator(".jp-InputPrompt").filter(
        has_text=re.compile(r"^\s*\[\d+\]:\s*$"))
    lab.wait(done.or_(_tracebacks(page)).first, f"{what}: the last cell's execution count", RUN_ALL_S)
    if _tracebacks(page).count():
        lab.fail(f"{what}: a cell raised:\n{_tracebacks(page).first.inner_text()[-3000:]}")


def test_rating_notebook_in_jupyterlab(jupyterlab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from cartoonify.rating import RatingStore, collect_items
    from cartoonify.rating.widget import rating_order, split_items

    run_dir = jupyterlab["run_dir"]
    queue, excluded = split_items(collect_items(run_dir))
    assert len(queue) == 4 and not excluded, "the tiny run has 2 checkpoints x 2 validation images"
    order = [item.path for item in rating_order(queue, blind=True, seed=0, mode="image")]  # the widget's order
    expected_rows = [(RATER, order[0], BUTTON_RATING), (RATER, order[1], KEY_RATING)]

    console: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.on("console", lambda msg: console.append(f"{msg.text} ({msg.location.get('url', '')})")
                    if msg.type == "error" else None)
            page.on("pageerror", lambda exc: console.append(f"uncaught: {exc}"))
            lab = _Driver(page, jupyterlab, tmp_path)

            # -- open the notebook and run all cells -------------------------------------------------------------
            page.goto(f"{jupyterlab['base']}/lab/tree/{jupyterlab['notebook'].name}?token={jupyterlab['token']}",
                      timeout=PAGE_LOAD_S * 1000)
            lab.wait(page.locator(".jp-Notebook .jp-Cell").first, "the notebook's cells", PAGE_LOAD_S)
            # the status bar's kernel item reads "No Kernel | Initializing", then "Python 3 (ipykernel) | Idle" once
            # the kernel is started and connected (a Run All before that can be lost while the kernel starts)
            kernel_idle = page.locator(".jp-StatusBar-TextItem").filter(has_text=re.compile(r"^Python 3.*\| Idle$"))
            lab.wait(kernel_idle, "the notebook's kernel started, connected and idle", RUN_ALL_S)
            lab.menu("Run", "Run All Cells")
            _wait_run_all(lab, page, "Run All Cells")
            widget = _widget(page)
            lab.wait(widget, "the rating widget", ACTION_S)

            # -- rate: a name, a button, the key box ----------------------------------------------------------------
            rater_box = widget.get_by_label("Rater", exact=True)
            key_box = widget.get_by_label("Key", exact=True)
            button = widget.get_by_role("button", name=str(BUTTON_RATING), exact=True)
            show_step = widget.get_by_role("button", name="Show step", exact=True)
            status = widget.locator(".widget-html", has_text="rated")  # "<rater>: 1/4 rated, 3 remaining ..."
            shown = widget.locator(".widget-html code")  # the image's path, once "Show step" is on
            lab.check("rating buttons off without a rater", expect(button).to_be_disabled)
            rater_box.press_sequentially(RATER)
            lab.check("the status after typing the rater's name", expect(status).to_contain_text, f"{RATER}: 0/4 rated")
            show_step.click()
            lab.check("the first image of the blind order", expect(shown).to_have_text, order[0])
            lab.check("rating buttons on with a rater", expect(button).to_be_enabled)
            button.click()
            lab.check("the status after the rating button", expect(status).to_contain_text, "1/4 rated, 3 remaining")
            lab.check("the second image after the rating button", expect(shown).to_have_text, order[1])
            key_box.fill(str(KEY_RATING))
            key_box.press("Enter")
            lab.check("the status after the key box", expect(status).to_contain_text, "2/4 rated, 2 remaining")
            lab.check("the third image after the key box", expect(shown).to_have_text, order[2])
            assert _ratings_on_disk(run_dir) == expected_rows, "ratings.csv after a button and the key box"

            # -- restart the kernel and run all: the widget resumes at the first unrated image ---------------------
            old_rater_box = rater_box.element_handle()
            lab.menu("Kernel", "Restart Kernel and Run All Cells…")
            lab.wait(page.locator(".jp-Dialog .jp-mod-accept"), "the restart dialog's confirm button", ACTION_S).click()
            try:
                old_rater_box.wait_for_element_state("hidden", timeout=RUN_ALL_S * 1000)
            except Exception as exc:  # noqa: BLE001 - any failure here means the same thing, named below
                lab.fail("the old widget was not cleared by the restart", exc)
            _wait_run_all(lab, page, "Restart Kernel and Run All Cells")
            lab.wait(widget, "the rating widget after the restart", ACTION_S)
            lab.check("the rater box holds the last rater after the restart", expect(rater_box).to_have_value, RATER)
            lab.check("the status after the restart", expect(status).to_contain_text, f"{RATER}: 2/4 rated, 2 remaining")
            rated = RatingStore(run_dir).rated_by(RATER)
            resume = next(path for path in order if path not in rated)  # the library's first unrated image
            assert resume == order[2]
            show_step.click()
            lab.check("the widget resumes at the first unrated image", expect(shown).to_have_text, resume)
            assert _ratings_on_disk(run_dir) == expected_rows, "ratings.csv after the restart"
            context.close()
        finally:
            browser.close()
    assert not console, "errors in the browser console:\n" + "\n".join(console)
