"""Screenshots of the MLflow UI for docs/tracking.md: what a reviewer sees after the README's runs.

Records two 10-episode runs of ``experiments/breast_cancer_gp.toml`` (as shipped, and with a fixed
``kl_weight = 1``) to a fresh local store in a temporary folder, serves it with ``mlflow ui``, and drives
Chromium through the pages a reviewer opens: the experiment on its training runs, a run expanded into its
system runs, and the charts of one run's system runs, where student and baseline share every axis.

Needs what distill does not: Playwright for Python (``pip install playwright``, used with the system's
browser, nothing downloaded) and Chromium (Debian: ``apt-get install chromium``).

    python tools/mlflow_screenshots.py                 # writes docs/images/mlflow_*.png
    python tools/mlflow_screenshots.py --out /tmp/x --browser /usr/bin/chromium
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "breast_cancer_gp.toml"
#: Chromium's background services reach for Google's hosts; a closed network refuses them, many at a time
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1700, "height": 1200}
SETTLE_MS = 5000  # the UI fetches runs and metric histories after the page loads


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(folder: Path, *extra: str) -> dict:
    """One tracked ``distill run`` of the main job in ``folder`` (its default local store); its summary."""
    out = folder / f"run{len(list(folder.glob('run*')))}"
    subprocess.run([sys.executable, "-m", "distill", "run", str(EXPERIMENT), "-q", "--episodes", "10",
                    "--output", str(out), *extra], cwd=folder, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def _serve(folder: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db",
                             "--port", str(port)], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("mlflow ui exited") from None
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("mlflow ui did not answer")


def _shoot(base: str, shipped: dict, fixed: dict, out: Path, browser: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    experiment = shipped["mlflow_ui_url"].split("/experiments/")[1].split("/")[0]
    runs_view = f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    written = []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser, args=BROWSER_ARGS)
        page = chromium.new_context(viewport=VIEWPORT).new_page()

        def open_page(url: str) -> None:
            page.goto(url)
            page.wait_for_timeout(SETTLE_MS)
            close = page.locator("button[aria-label*='close' i]")  # the assistant panel opens itself at first
            if close.count():
                close.first.click()
                page.wait_for_timeout(500)

        def expand(run_name_end: str) -> None:
            cells = page.locator("[role='gridcell'][col-id='attributes.`Run Name`']")
            (row,) = [i for i in range(cells.count()) if cells.nth(i).inner_text().endswith(run_name_end)]
            cells.nth(row).locator("button").first.click()  # the row's expander
            page.wait_for_timeout(2000)

        def save(name: str) -> None:
            path = out / name
            page.screenshot(path=str(path))
            written.append(path)

        # 1. The link every run prints: the experiment on its training runs, this run's system runs under it.
        open_page(runs_view)
        cells = page.locator("[role='gridcell'][col-id='attributes.`Run Name`']")
        first = [i for i in range(cells.count()) if cells.nth(i).inner_text().endswith("10 episodes")][0]
        cells.nth(first).locator("button").first.click()
        page.wait_for_timeout(2000)
        save("mlflow_runs.png")

        # 2. One run's system runs on the chart view: one axis per metric, every system on it. A new
        # browser profile: the first page's expanded rows are remembered, and a click would fold them.
        page = chromium.new_context(viewport=VIEWPORT).new_page()
        only = urllib.parse.quote(f"tags.mlflow.parentRunId = '{fixed['mlflow_run_id']}'")
        open_page(f"{runs_view}&searchFilter={only}")
        expand("10 episodes")
        page.locator("label:has(input[value=CHART])").click()
        page.wait_for_timeout(SETTLE_MS)
        # charts render as they scroll into view: the section of the un-prefixed (system run) metrics first
        page.get_by_text("Model metrics").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(3000)
        title = page.get_by_text("test_accuracy", exact=True).first
        title.evaluate("e => e.scrollIntoView({block: 'center'})")
        page.wait_for_timeout(3000)
        save("mlflow_systems_chart.png")
        chromium.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--browser", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="distill-shots-") as tmp:
        folder = Path(tmp)
        shipped = _run(folder)
        fixed = _run(folder, "--set", "objective.kl_weight=1", "--set", "objective.temperature=2")
        port = _free_port()
        server = _serve(folder, port)
        try:
            for path in _shoot(f"http://127.0.0.1:{port}", shipped, fixed, args.out, args.browser):
                print(f"wrote {path}")
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
