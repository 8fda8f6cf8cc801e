"""The MLflow UI as a person sees it: `make ui` on a store with a sweep, in headless Chromium.

Debian's chromium and chromium-driver drive it through Selenium (no browser download); where they
are missing, the module skips, saying why (under CI=true it fails: .ci/run provisions them).
Screenshots go to the test's folder; README's two pictures also to $UI_SCREENSHOTS when it is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import CONF, ROOT, free_port, require, run_in_process, store_overrides
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from pipeline.tracking import server as ts

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Chromium's own background traffic fails on a machine without internet; these keep it quiet.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
]
EPOCHS = 3
WAIT_S = 60  # the UI is a React app: pages fill in after the first paint


def test_make_ui_names_the_training_runs_page_and_creates_nothing(tmp_path):
    from pipeline.cli.ui import EXPERIMENT, runs_url

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        assert compose("train").tracking.experiment == EXPERIMENT
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert runs_url(store, "http://h:1") == "http://h:1"  # no store yet: none is made
    assert not (tmp_path / "mlruns").exists()
    (tmp_path / "mlruns").mkdir()
    client = MlflowClient(store)
    client.create_experiment("other")
    assert runs_url(store, "http://h:1") == "http://h:1"  # no such experiment yet
    created = client.create_experiment(EXPERIMENT)
    assert runs_url(store, "http://h:1") == f"http://h:1/#/experiments/{created}/runs"
    command = subprocess.run(
        ["make", "-s", "-n", "ui", "PORT=5099"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "-m pipeline.cli.ui --store sqlite:///" in command and "--port 5099" in command


def test_make_ui_serves_the_project_store_on_loopback():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        store = compose("train").tracking.uri  # where `python train.py` logs by default
    command = subprocess.run(
        ["make", "-s", "-n", "ui"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert f"--backend-store-uri {store} " in command
    assert "--host 127.0.0.1 " in command


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    require(
        "Chromium with ChromeDriver",
        CHROMIUM.exists() and CHROMEDRIVER.exists(),
        "sudo apt-get install -y chromium chromium-driver (or: sudo bash scripts/provision.sh)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory) -> Path:
    """A store holding one 2-job sweep (its parent, two children and the report)."""
    store = tmp_path_factory.mktemp("ui") / "mlruns"
    status = run_in_process(
        "-m",
        *store_overrides(store),
        "optimizer=sgd,adam",
        "data.source=embedded",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.limit_train_batches=10",
        "tracking.log_model=false",
        f"hydra.sweep.dir={store.parent}/sweep",
    )
    assert status == 0
    return store


@pytest.fixture(scope="module")
def ui(sweep_store) -> str:
    """`make ui` on a free port, pointed at the sweep's store."""
    port = free_port()
    log = (sweep_store.parent / "ui.log").open("w")
    process = subprocess.Popen(
        ["make", "-s", "ui", f"PORT={port}", f"STORE=sqlite:///{sweep_store}/mlflow.db"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # make, mlflow and its workers: one process group to stop
    )
    url = f"http://127.0.0.1:{port}"
    try:
        ts.wait_until_healthy(url, process, timeout=180)
        yield url
    finally:
        ts.stop(process)
        log.close()


def shoot(driver, folder: Path, name: str, readme: bool = False) -> Path:
    """A screenshot into the test's folder; README's pictures also into $UI_SCREENSHOTS."""
    path = folder / name
    driver.save_screenshot(str(path))
    if readme and os.environ.get("UI_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["UI_SCREENSHOTS"]) / name)
    return path


def test_a_person_sees_the_sweep_its_charts_and_its_report(browser, ui, sweep_store, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    client = MlflowClient(f"sqlite:///{sweep_store}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-optimizers")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    wait = WebDriverWait(browser, WAIT_S)

    def visible_text(text: str):
        return wait.until(shown.visibility_of_element_located((By.XPATH, f"//*[text()='{text}']")))

    # The experiment, in the list of experiments.
    browser.get(f"{ui}/#/experiments")
    visible_text("mnist-optimizers")

    # Its runs, at the address `make ui` printed first: the sweep's parent is one row;
    # expanding it shows both children.
    printed = (sweep_store.parent / "ui.log").read_text().splitlines()[0]
    runs_page = f"{ui}/#/experiments/{experiment.experiment_id}/runs"
    assert printed.startswith(f"MLflow UI: {runs_page}   (training runs of mnist-optimizers")
    browser.get(runs_page)
    visible_text("Training runs")
    for close in browser.find_elements(By.XPATH, "//button[@aria-label='Close']"):
        close.click()  # the MLflow Assistant side panel, to leave room for the table
    parent_cell = visible_text(parent.info.run_name).find_element(
        By.XPATH, "./ancestor::*[@role='gridcell'][1]"
    )
    for child in children:
        assert not browser.find_elements(By.XPATH, f"//*[text()='{child.info.run_name}']")
    expand = parent_cell.find_element(By.TAG_NAME, "button")
    browser.execute_script("arguments[0].click()", expand)
    for child in children:
        visible_text(child.info.run_name)
    shoot(browser, tmp_path, "ui_sweep_runs.png")

    # The chart view, searched for validation accuracy: one line per child, a point per epoch.
    chart_view = browser.find_element(By.XPATH, "//input[@type='radio' and @value='CHART']")
    browser.execute_script("arguments[0].click()", chart_view)  # its icon takes a real click
    search = wait.until(
        shown.visibility_of_element_located(
            (By.XPATH, "//input[@placeholder='Search metric charts']")
        )
    )
    search.send_keys("val/acc")
    line = "*[local-name()='path' and contains(@class,'js-line')]"  # a plotted series
    in_card = f"//*[text()='val/acc']/ancestor::*[.//{line}][1]//{line}"

    def lines(_) -> list[str]:
        drawn = [p.get_attribute("d") for p in browser.find_elements(By.XPATH, in_card)]
        return drawn if len(drawn) >= len(children) else []

    for path in wait.until(lines):
        assert path.count("L") + 1 == EPOCHS  # "M x,y L x,y L x,y": one point per epoch
    shoot(browser, tmp_path, "ui_sweep.png", readme=True)

    # The sweep's report, among the parent run's artifacts: its table, then its figure.
    experiment_id, parent_id = experiment.experiment_id, parent.info.run_id
    browser.get(f"{ui}/#/experiments/{experiment_id}/runs/{parent_id}/artifacts")
    visible_text("report").click()
    visible_text("report.md").click()
    for child in children:
        optimizer = child.data.tags["optimizer"]
        wait.until(
            shown.visibility_of_element_located(
                (By.XPATH, f"//*[@role='cell']//*[text()='{optimizer}']")
            )
        )
    shoot(browser, tmp_path, "ui_sweep_report_table.png")
    visible_text("report.png").click()
    png = Path(client.download_artifacts(parent_id, "report/report.png", str(tmp_path)))
    width = int.from_bytes(png.read_bytes()[16:20], "big")  # from the PNG's header
    shown_width = "return Math.max(0, ...[...document.images].map(i => i.naturalWidth))"
    wait.until(lambda _: browser.execute_script(shown_width) == width)  # the figure, drawn
    shoot(browser, tmp_path, "ui_sweep_report.png", readme=True)
