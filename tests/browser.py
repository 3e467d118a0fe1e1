"""Real browser, real server: start `studio serve` on a free port and drive it with Playwright in
Debian's Chromium. Tests skip with a reason where no Chromium binary is installed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from workerproc import ROOT, worker_env

CHROMIUM = os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
SHARED_MODELS = Path(os.environ.get("STUDIO_TEST_MODELS_DIR", Path.home() / ".cache" / "fine-tune-studio" / "models"))


def require_browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium to run the browser tests")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed")


class Server:
    """`studio serve` (UI + one real huey consumer) in its own process group."""

    def __init__(self, home: Path, log: Path, worker: bool = True, serve_args: tuple[str, ...] = (), **extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "studio.cli", "serve", "--port", str(self.port), *serve_args]
        if not worker:
            args.append("--no-worker")
        self.log = open(log, "ab")
        self.started = time.time()
        self.proc = subprocess.Popen(args, cwd=ROOT, env=worker_env(home, **extra), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> float:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"studio serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return time.time() - self.started
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"studio serve did not answer on {self.url} within {timeout} s")

    def stop(self) -> int | None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()
        return self.proc.returncode


class InferServer:
    """`studio infer` (the OpenAI-compatible endpoint alone) on a free port, registered in ``home``'s database."""

    def __init__(self, home: Path, log: Path, **extra: str):
        self.port = free_port()
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "infer", "--port", str(self.port)], cwd=ROOT,
                                     env=worker_env(home, **extra), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"studio infer exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"studio infer did not answer on port {self.port} within {timeout} s")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()
        return self.proc.returncode


def torch_mapped(pid: int) -> list[str]:
    """The torch libraries mapped into process ``pid`` (/proc/PID/maps): empty when it never imported torch."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in lines if "libtorch" in line or "/torch/" in line})


def ensure_bundled_model(models_dir: Path = SHARED_MODELS) -> Path:
    """Convert the bundled SmolLM2 into ``models_dir`` once (what a worker does at start), so the tests that
    need it, such as the Datasets tab's preview, never depend on a worker having finished first."""
    subprocess.run([sys.executable, "-c", "from workers.bundled import ensure_bundled; ensure_bundled()"], cwd=ROOT,
                   env=worker_env(models_dir.parent, STUDIO_MODELS_DIR=str(models_dir)), check=True, timeout=1200)
    return models_dir / "SmolLM2-135M-Instruct"


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                      headless=True, args=CHROMIUM_ARGS)


def open_page(playwright, url: str):
    """(browser, page): a 1400x1000 headless page on ``url`` with generous waits for a loaded CPU."""
    browser = launch_browser(playwright)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    return browser, page


def pick(page, elem_id: str, option: str) -> None:
    """Choose an option of a gradio Dropdown by its visible text."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option).first.click()


def pick_first_containing(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.click()
    page.get_by_role("option").filter(has_text=text).first.click()


def type_number(page, elem_id: str, value: str, tries: int = 3) -> None:
    """Type a number as a user does (then Tab to commit it) and wait until the box holds it. gradio mounts an
    accordion's inputs as it opens, and a value typed in that same instant can be replaced by the mounted
    component's own: typing again, as a user seeing the old value would, is what a person does too."""
    from playwright.sync_api import expect

    box = page.locator(f"#{elem_id} input")
    for attempt in range(tries):
        expect(box).to_be_visible()
        box.fill(value)
        box.press("Tab")
        try:
            expect(box).to_have_value(value, timeout=5_000)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise


def open_tab(page, name: str) -> None:
    # gradio can render the selected tab's button twice and push a later one into a hidden overflow list in
    # headless Chromium, so click the tab's own button by its text through the DOM
    page.wait_for_selector("button[role=tab]", state="attached")
    clicked = page.evaluate(
        """(name) => { const b = [...document.querySelectorAll('button[role=tab]')]
                             .find(x => x.textContent.trim() === name && x.getAttribute('data-tab-id') === name.toLowerCase())
                          || [...document.querySelectorAll('button[role=tab]')].find(x => x.textContent.trim() === name);
                     if (!b) return false; b.click(); return true; }""", name)
    assert clicked, f"no tab named {name}: " + str(page.evaluate(
        "() => [...document.querySelectorAll('button[role=tab]')].map(x => [x.textContent.trim(), x.getAttribute('data-tab-id')])"))
    page.wait_for_timeout(300)


def chart_points(page, trace: str = "train loss") -> int:
    """Number of points of a trace in the Runs chart, read from the live plotly figure in the page."""
    return page.evaluate(
        """(trace) => { const el = document.querySelector('#run-chart .js-plotly-plot');
               if (!el || !el.data) return 0;
               const t = (el._fullData || el.data).find(d => d.name === trace);
               return t && t.x && t.x.length !== undefined ? t.x.length : 0; }""", trace)
