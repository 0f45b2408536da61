"""The MLflow UI as a user sees it: a tiny sweep, `harness ui`, headless Chromium via Selenium.

Checks that the sweep's runs appear under their readable names (``E4-adamw-s0``), that the chart
view draws their loss curves, and that the compare view shows the varying params in a parallel
coordinates plot. Saves ``results/ui/runs_chart.png`` and ``results/ui/compare.png`` (shown in
the README). Run with ``make test-ui``; skipped when Chromium, chromedriver or selenium is absent
(Debian: ``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.ui,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs chromium and chromedriver (apt-get install chromium "
                              "chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "results" / "ui"
HARNESS = str(Path(sys.executable).parent / "harness")
SWEEP = "uiview"
NAMES = ["E4-adamw-s0", "E4-muon-s0", "E8-adamw-s0", "E8-muon-s0"]
CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1600,1250"]


def sweep_spec() -> dict[str, Any]:
    """Four tiny trials on the synthetic corpus: 2 expert counts x AdamW/Muon."""
    return {
        "name": SWEEP,
        "description": "UI check: 2 expert counts x AdamW/Muon on the synthetic corpus",
        "base": {
            "model": {"d_model": 32, "n_layers": 2, "first_k_dense": 1, "dense_ffn_dim": 64,
                      "attention": {"n_heads": 2, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
                                    "qk_rope_head_dim": 4, "v_head_dim": 8},
                      "moe": {"n_routed_experts": 4, "top_k": 2, "expert_ffn_dim": 16}},
            "optim": {"name": "adamw", "lr": 3e-3},
            "data": {"corpus": "synthetic", "synthetic_vocab": 32, "synthetic_tokens": 100_000,
                     "val_tokens": 2048},
            "train": {"tokens": 24 * 512, "batch_tokens": 512, "seq_len": 64, "log_every": 2,
                      "eval_every": 2048, "checkpoint_every": 4096, "threads": 1},
        },
        "grid": {"model.moe.n_routed_experts": [4, 8], "optim.name": ["adamw", "muon"]},
        "resources": {"cpu": 1},
        "max_concurrent": 2,
    }


@dataclass(frozen=True)
class Served:
    """A finished sweep behind a running `harness ui`."""

    base_url: str
    experiment_id: str
    run_ids: list[str]
    log: Path  # what `harness ui` printed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(base_url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    url = f"{base_url}/api/2.0/mlflow/{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return dict(json.load(r))


def _wait_healthy(base_url: str, ui: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=5):
                return
        except OSError:
            if ui.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"harness ui did not come up:\n{log.read_text()[-2000:]}") from None
            time.sleep(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Run the sweep through the CLI and serve its store with `harness ui` on a free port."""
    folder = tmp_path_factory.mktemp("ui")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}",
               HARNESS_STORAGE=str(folder / ".harness"), HARNESS_CACHE=str(folder / "cache"))
    path = folder / f"{SWEEP}.yaml"
    path.write_text(yaml.safe_dump(sweep_spec()))

    def run(*args: str) -> subprocess.Popen:
        return subprocess.Popen([HARNESS, *args], cwd=folder, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    status = run("status")  # creates the store, so the sweep and the UI never both migrate it
    assert status.wait(timeout=120) == 0, status.communicate()[0]
    submit = run("submit", str(path))
    port = _free_port()
    log = folder / "ui.log"
    with log.open("w") as sink:
        ui = subprocess.Popen([HARNESS, "ui", "--port", str(port)], cwd=folder, env=env,
                              stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = submit.communicate(timeout=600)
        assert submit.returncode == 0 and "4 finished" in out, out[-3000:]
        base_url = f"http://127.0.0.1:{port}"
        _wait_healthy(base_url, ui, log)
        exp_id = _api(base_url, f"experiments/get-by-name?experiment_name={SWEEP}")[
            "experiment"]["experiment_id"]
        runs = _api(base_url, "runs/search", {"experiment_ids": [exp_id], "max_results": 100,
                                              "filter": "tags.trial_hash != ''"})["runs"]
        yield Served(base_url, exp_id, [r["info"]["run_id"] for r in runs], log)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Debian Chromium with a fresh profile, driven by the system chromedriver.

    The page as it was when the test ended is kept in the test's tmp_path as ``last.png``.
    """
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(1600, 1250)
    try:
        yield driver
    finally:
        driver.save_screenshot(str(tmp_path / "last.png"))
        driver.quit()


def _wait(driver: Any, xpath: str, timeout: float = 60) -> Any:
    return WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.XPATH, xpath)))


def _close_assistant(driver: Any) -> None:
    """Hide MLflow's assistant side panel when this MLflow version shows one."""
    for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
        with contextlib.suppress(WebDriverException):
            if button.is_displayed():
                button.click()


def _run_link(name: str) -> str:
    return f"//a[contains(@href, '/runs/')][normalize-space(.)='{name}']"


def _page_text(driver: Any) -> str:
    """All text of the page, including what is scrolled or clipped out of view."""
    return str(driver.execute_script("return document.body.textContent"))


def _expand_parent(driver: Any, timeout: float = 90) -> None:
    """Open the sweep's parent row so its child runs show (the table re-renders, so retry)."""
    deadline = time.monotonic() + timeout
    while not driver.find_elements(By.XPATH, _run_link(NAMES[0])):
        if time.monotonic() > deadline:
            raise AssertionError(f"child runs never showed under {SWEEP}")
        try:
            link = driver.find_element(By.XPATH, _run_link(SWEEP))
            link.find_element(By.XPATH, "./ancestor::div[@role='gridcell'][1]//button").click()
            WebDriverWait(driver, 10).until(
                lambda d: d.find_elements(By.XPATH, _run_link(NAMES[0])))
        except (NoSuchElementException, StaleElementReferenceException, TimeoutException):
            time.sleep(1)


def _open_from_the_list(driver: Any, served: Served) -> None:
    """Open the UI's front page as a new user does, then click the sweep in the list."""
    driver.get(f"{served.base_url}/")
    link = _wait(driver, f"//a[normalize-space(.)='{SWEEP}']")
    _close_assistant(driver)
    link.click()
    _wait(driver, _run_link(SWEEP))  # the parent run is named by the sweep


def test_clicking_a_sweep_in_the_list_opens_its_training_runs(served: Served,
                                                              browser: Any) -> None:
    """MLflow 3 opens on its GenAI view and led every experiment link to a GenAI overview
    ("Traces 0") before ``harness ui`` set the model-training view as the default."""
    _open_from_the_list(browser, served)
    url = browser.current_url
    assert f"/experiments/{served.experiment_id}/runs" in url, url
    assert "workflowType=machine_learning" in url and "overview" not in url, url
    text = _page_text(browser)
    assert "Model training" in text and "Traces 0" not in text


def test_the_ui_start_is_quiet(served: Served) -> None:
    """No library warnings on the user's terminal (four StarletteDeprecationWarnings before)."""
    log = served.log.read_text()
    assert "Warning" not in log and "Traceback" not in log, log[-3000:]


SCROLL_DOWN = """for (const el of document.querySelectorAll('*')) {
  if (el.scrollHeight > el.clientHeight + 10) { el.scrollTop += 500; }
}"""


def _find_chart(driver: Any, metric: str, timeout: float = 90) -> None:
    """Wait for the chart titled ``metric``, scrolling the chart pane down as needed: MLflow
    renders only the charts in view."""
    xpath = f"//*[normalize-space(text())='{metric}']"
    deadline = time.monotonic() + timeout
    while not driver.find_elements(By.XPATH, xpath):
        if time.monotonic() > deadline:
            raise AssertionError(f"no chart {metric}")
        driver.execute_script(SCROLL_DOWN)
        time.sleep(1)


def test_chart_view_shows_each_trials_loss_curve(served: Served, browser: Any) -> None:
    _open_from_the_list(browser, served)
    assert "/runs" in browser.current_url
    _close_assistant(browser)
    browser.find_element(By.XPATH, "//input[@value='CHART']/ancestor::label").click()
    _wait(browser, "//input[@placeholder='Search metric charts']")
    _expand_parent(browser)
    for name in NAMES:
        _wait(browser, _run_link(name))
    search = _wait(browser, "//input[@placeholder='Search metric charts']")
    search.send_keys("loss")
    for metric in ("test/loss", "train/loss", "val/loss"):
        _find_chart(browser, metric)
    WebDriverWait(browser, 60).until(
        lambda d: all(f"{n} (train/loss)" in _page_text(d) for n in NAMES))
    WebDriverWait(browser, 60).until(  # both charts drawn, not still loading
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer")) >= 2)
    time.sleep(1)  # let plotly finish its transition before the picture
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "runs_chart.png"))


def test_compare_view_plots_the_varying_params(served: Served, browser: Any) -> None:
    assert len(served.run_ids) == len(NAMES)
    runs = urllib.parse.quote(json.dumps(served.run_ids))
    exps = urllib.parse.quote(json.dumps([served.experiment_id]))
    browser.get(f"{served.base_url}/#/compare-runs?runs={runs}&experiments={exps}"
                "&workflowType=machine_learning")
    _wait(browser, "//*[normalize-space(text())='Parallel Coordinates Plot']")
    _close_assistant(browser)
    for name in NAMES:
        _wait(browser, f"//*[normalize-space(text())='{name}']")
    # MLflow picks varying params as plot axes: one for the expert count (or a size derived from
    # it) and one for the optimizer (its name or arm).
    axis = "//*[name()='svg']//*[name()='text'][{}]"
    for group in (("model.moe.n_routed_experts", "params_total", "sparsity"),
                  ("optim.name", "arm")):
        either = " or ".join(f"normalize-space(.)='{p}'" for p in group)
        _wait(browser, axis.format(either))
    row = _wait(browser, "//tr[.//*[normalize-space(text())='model.moe.n_routed_experts']]")
    assert sorted(row.text.split()[1:]) == ["4", "4", "8", "8"], row.text
    time.sleep(1)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "compare.png"))
