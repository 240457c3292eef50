"""scripts/ui.py in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright)
clicks through the UI on a store with a small study and a plain run, and after every page asserts
that MLflow 3 stayed in its model-training view instead of switching to GenAI; then reads the
study's story: the runs table's columns, a trial's curves and the parent's optimization history.

Screenshots of every page are left in the test's tmp_path (pytest keeps the last three runs).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from helpers import tiny
from study.ui import VIEW_STORAGE_KEY

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STUDY = "browsed"
# How long a page may take to show what is waited for: generous, since the MLflow UI renders
# its runs table slowly on a busy 2-core machine (30 s was once too short beside other tests).
PAGE_WAIT_MS = 90_000
TRIALS = 3


def _need_browser() -> None:
    """Skip where the browser is missing, except in CI: there this test must run."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright's Python client (pip install -e '.[dev]')")
    if missing:
        message = f"no headless browser: missing {' and '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: in CI the browser test must run", pytrace=False)
        pytest.skip(message)


def _script(name: str, *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / f"{name}.py"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small study and a plain run (experiment `study`), trained side by side."""
    work = tmp_path_factory.mktemp("browsed")
    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    runs = [
        _script("run", f"tracking.uri={uri}", *tiny("trainer.max_epochs=3"), cwd=work),
        _script(
            "run",
            "-m",
            "sweep",
            f"tracking.uri={uri}",
            f"sweep.storage={work / 'study.journal'}",
            f"hydra.sweep.dir={work / 'sweep'}",
            f"sweep.study_name={STUDY}",
            f"sweep.n_trials={TRIALS}",
            "sweep.workers=2",
            *tiny("trainer.max_epochs=3"),
            cwd=work,
        ),
    ]
    for run in runs:
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output
    return uri


def newest_first(uri: str) -> list[str]:
    """The experiments by their most recent run, newest first: what ui.py must list."""
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    latest: dict[str, int] = {}
    for run in runs:
        name = client.get_experiment(run.info.experiment_id).name
        latest[name] = max(latest.get(name, 0), run.info.start_time)
    return sorted(latest, key=lambda name: latest[name], reverse=True)


def _search_runs_from(link: str, origin: str) -> int:
    """The status of a runs search POSTed to the server of `link` from a page of `origin`."""
    server = link.split("/#")[0]
    request = urllib.request.Request(
        f"{server}/ajax-api/2.0/mlflow/runs/search",
        data=b"{}",
        headers={"Origin": origin, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class UI:
    process: subprocess.Popen[str]
    url: str
    output: list[str]
    started_s: float

    @property
    def links(self) -> list[tuple[str, str]]:
        """(experiment, link) as printed, in order."""
        found = []
        for line in self.output:
            if line.startswith("runs of "):
                name, link = line.rstrip("\n").removeprefix("runs of ").rsplit(": ", 1)
                found.append((name, link))
        return found


@contextlib.contextmanager
def ui(store: str, *args: str, timeout_s: float = 60) -> Iterator[UI]:
    """scripts/ui.py until it prints its links; stopped with a plain SIGTERM, as `kill` does."""
    port = _free_port()
    began = time.monotonic()
    process = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPTS / "ui.py"),
            "--tracking-uri",
            store,
            "--port",
            str(port),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    started = UI(process, f"http://127.0.0.1:{port}", [], 0.0)
    reader = threading.Thread(target=lambda: started.output.extend(process.stdout or []))
    reader.start()
    try:
        while not started.links:
            assert time.monotonic() - began < timeout_s, started.output
            assert process.poll() is None, started.output
            time.sleep(0.1)
        started.started_s = time.monotonic() - began
        time.sleep(0.5)  # the other links, printed with the first
        yield started
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # anything it left behind
            reader.join(timeout=10)


def click_through(page, target, fragment: str, tries: int = 3) -> None:  # type: ignore[no-untyped-def]
    """Click `target` until the page's address holds `fragment`: on a loaded machine a click
    can land while the app is still rendering the page, and do nothing."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(tries):
        target.click()
        try:
            page.wait_for_function(
                "fragment => location.href.includes(fragment)", arg=fragment, timeout=10_000
            )
            return
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise


def assert_training_view(page, what: str, shots: Path) -> None:  # type: ignore[no-untyped-def]
    """The sidebar follows the view: its Docs link points at the ML docs, never the GenAI ones,
    and none of the GenAI view's pages (judges, sessions, prompts) is offered."""
    docs = page.locator("aside a[href*='mlflow.org/docs/latest/']").first
    docs.wait_for(state="attached")
    page.screenshot(path=str(shots / f"{len(list(shots.iterdir())):02d}-{what}.png"))
    href = docs.get_attribute("href") or ""
    assert "/docs/latest/ml/" in href, f"{what}: GenAI view ({href}) at {page.url}"
    genai_only = page.locator("aside a[href*='/judges'], aside a[href*='/chat-sessions']")
    assert genai_only.count() == 0, f"{what}: GenAI navigation at {page.url}"
    assert page.get_by_text("Detect Issues").count() == 0, f"{what}: GenAI pop-up at {page.url}"


def test_every_page_a_click_reaches_stays_in_the_model_training_view(
    store: str, tmp_path: Path
) -> None:
    _need_browser()
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with ui(store) as server, sync_playwright() as playwright:
        assert [name for name, _ in server.links] == newest_first(store), server.output
        assert "MLflow UI bound to 127.0.0.1 (this machine only; --host to change)\n" in (
            server.output
        )
        assert not [line for line in server.output if line.startswith("warning:")]
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(PAGE_WAIT_MS)
        run_links = page.locator("[role=row] a[href*='/runs/']")

        page.goto(dict(server.links)[STUDY])
        run_links.first.wait_for()
        assert_training_view(page, "runs", shots)
        assert page.get_by_text(f"study {STUDY}").count() > 0  # the study's parent run

        run_links.first.click()
        page.get_by_role("tab", name="Model metrics").wait_for()
        assert_training_view(page, "run", shots)

        page.go_back()
        run_links.first.wait_for()
        run_links.nth(TRIALS).wait_for()  # the parent opens expanded: its trials under it
        for trial in (1, 2):
            run_links.nth(trial).locator("xpath=ancestor::*[@role='row']").locator(
                "input.ag-checkbox-input"
            ).check(force=True)
        click_through(page, page.get_by_role("button", name="Compare"), "/compare-runs?")
        assert_training_view(page, "compare", shots)

        click_through(page, page.locator("a[href*='metric=%22val%2Floss%22']").first, "/metric?")
        assert_training_view(page, "metric", shots)

        page.locator("aside a[href='#/experiments']").first.click()
        listed = page.locator(f"a.experiment-link[title='{STUDY}']")
        listed.wait_for()
        assert_training_view(page, "experiments", shots)
        listed.click()
        run_links.first.wait_for()
        assert_training_view(page, "experiment-from-list", shots)
        page.go_back()
        listed.wait_for()
        assert_training_view(page, "experiments-again", shots)

        # A first visit (nothing in localStorage) to a bare experiment URL, no workflowType.
        experiment = MlflowClient(store).get_experiment_by_name(STUDY)
        assert experiment is not None
        fresh = browser.new_context().new_page()
        fresh.goto(f"{server.url}/#/experiments/{experiment.experiment_id}")
        fresh.locator("[role=row] a[href*='/runs/']").first.wait_for(timeout=PAGE_WAIT_MS)
        assert_training_view(fresh, "opened-directly", shots)

        # A browser that stored the GenAI view (a plain `mlflow server` on this port, or a
        # click on its toggle) before every load: the training view wins all the same.
        genai = browser.new_context()
        genai.add_init_script(f"localStorage.setItem('{VIEW_STORAGE_KEY}', '\"genai\"')")
        stored = genai.new_page()
        stored.goto(f"{server.url}/#/experiments/{experiment.experiment_id}")
        assert_training_view(stored, "genai-stored", shots)
        view = stored.evaluate(f"localStorage.getItem('{VIEW_STORAGE_KEY}')")
        assert view == '"machine_learning"', view
        browser.close()

    console = [line.rstrip("\n") for line in server.output if line.strip()]
    assert all(line.startswith(("MLflow UI bound to", "runs of ")) for line in console), console
    assert server.process.returncode == -signal.SIGTERM, server.output
    print(f"ui.py answered after {server.started_s:.1f} s; screenshots: {shots}")


def _cell(page, run_name: str, column: str):  # type: ignore[no-untyped-def]
    """The runs table's cell of `column` in the row of `run_name`: AG Grid draws the pinned
    name column and the others as separate row elements that share a row index."""
    link = page.get_by_role("link", name=run_name, exact=True)
    index = page.locator("[role=row]").filter(has=link).first.get_attribute("row-index")
    return page.locator(f"[role=row][row-index='{index}'] [col-id='{column}']").first


def _open_link(page, name: str):  # type: ignore[no-untyped-def]
    """Follow a description's link (MLflow opens them in a new tab); the new tab's page."""
    with page.context.expect_page() as opened:
        page.get_by_role("link", name=name).first.click()
    return opened.value


def _study_runs(store: str, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A folder for screenshots, and the study's runs by name."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(STUDY)
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    return shots, runs


def test_the_runs_table_and_the_run_pages_tell_the_studys_story(
    store: str, tmp_path: Path
) -> None:
    _need_browser()
    from playwright.sync_api import sync_playwright

    from study.sweep.trials import run_name
    from study.ui import this_machine

    shots, runs = _study_runs(store, tmp_path)
    parent, trial = f"study {STUDY}", run_name(0, TRIALS)
    assert set(runs) == {parent, *(run_name(n, TRIALS) for n in range(TRIALS))}
    # Bound to every interface: still served here, and the user is warned that it is open.
    with ui(store, "--host", "0.0.0.0") as server, sync_playwright() as playwright:
        assert (
            "warning: binding 0.0.0.0: anyone who can reach this machine can read and change "
            "your runs (the MLflow UI has no login)\n"
        ) in server.output, server.output
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(PAGE_WAIT_MS)
        link = dict(server.links)[STUDY]
        assert link.startswith(f"http://{this_machine()}:"), link  # not 0.0.0.0
        page.goto(link)  # as printed: what a colleague's browser opens
        assert _search_runs_from(link, "http://elsewhere.example") == 403  # others' scripts
        page.locator("[role=row] a[href*='/runs/']").nth(TRIALS).wait_for()  # expanded
        assert_training_view(page, "runs-table", shots)
        for name, run in runs.items():  # no column picked: the table shows them as it opens
            best = _cell(page, name, "metrics.`best_val_loss`").inner_text()
            assert float(best) == pytest.approx(run.data.metrics["best_val_loss"]), name
            assert best == f"{run.data.metrics['best_val_loss']:.7g}", name  # no float32 noise
            epoch = _cell(page, name, "metrics.`best_epoch`").inner_text()
            assert epoch == f"{run.data.metrics['best_epoch']:g}", name
            stopped = _cell(page, name, "metrics.`stopped_epoch`").inner_text()
            assert stopped == f"{run.data.metrics['stopped_epoch']:g}", name
            assert _cell(page, name, "tags.`fit`").inner_text() == run.data.tags["fit"], name
            state = _cell(page, name, "tags.`trial_state`").inner_text()
            assert state == run.data.tags.get("trial_state", "-"), name

        page.get_by_role("link", name=trial, exact=True).click()
        chart = _open_link(page, "train/loss and val/loss on one chart")
        for metric in ("train/loss", "val/loss"):  # the legend: both curves on one chart
            chart.get_by_text(f"{trial} ({metric})").wait_for()
        assert_training_view(chart, "trial-curves", shots)

        page.go_back()
        page.get_by_role("link", name=parent, exact=True).click()
        history = _open_link(page, "Optimization history")
        for metric in ("trial_value", "best_value"):
            history.get_by_text(f"{parent} ({metric})").wait_for()
        assert_training_view(history, "optimization-history", shots)
        browser.close()
    print(f"screenshots: {shots}")


# --- the study's story: markers, columns, the sorted table, the figure, the interactive page


def _row(page, index: int):  # type: ignore[no-untyped-def]
    """The run link of the table's row `index` as shown (AG Grid reuses its row elements, so
    their order in the page is not the order on screen)."""
    return page.locator(f"[role=row][row-index='{index}'] a[href*='/runs/']").first


def _shot(page, shots: Path, what: str) -> None:  # type: ignore[no-untyped-def]
    page.screenshot(path=str(shots / f"{len(list(shots.iterdir())):02d}-{what}.png"))


def test_a_trial_shows_where_it_should_have_stopped_and_the_study_its_story(
    store: str, tmp_path: Path
) -> None:
    _need_browser()
    from playwright.sync_api import sync_playwright

    from study.sweep.trials import run_name

    shots, runs = _study_runs(store, tmp_path)
    parent, trial = f"study {STUDY}", run_name(0, TRIALS)
    with ui(store) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.set_default_timeout(PAGE_WAIT_MS)
        page.goto(dict(server.links)[STUDY])
        # Opens ready: the parent expanded (its trials nested), the searched parameters shown.
        page.locator("[role=row] a[href*='/runs/']").nth(TRIALS).wait_for()
        _shot(page, shots, "study-table")
        for column in ("optimizer.lr", "data.batch_size", "model.dropout"):
            cell = _cell(page, trial, f"params.`{column}`")
            assert cell.inner_text() == runs[trial].data.params[column], column
        assert _row(page, 0).inner_text() == parent  # and its trials under it, unclicked

        # A trial's chart: its curves and the markers of its best epoch and its stop.
        page.get_by_role("link", name=trial, exact=True).click()
        chart = _open_link(page, "train/loss and val/loss on one chart, best epoch marked")
        for metric in ("val/loss", "marker/best_epoch", "marker/stopped", "marker/best_val_loss"):
            chart.get_by_text(f"{trial} ({metric})").wait_for()
        assert_training_view(chart, "trial-chart-with-markers", shots)
        assert page.get_by_text("drawn in curves.png").count() == 1
        chart.close()

        # The parent: a study, its trials counted, its figure, its sorted table, its plots.
        page.go_back()
        page.get_by_role("link", name=parent, exact=True).click()
        page.get_by_text("This run is a study.").wait_for()
        more = page.get_by_text("Show more", exact=True)
        if more.count():  # the description's folded lines
            more.first.click()
        _shot(page, shots, "study-description")
        figure = _open_link(page, "the best, clearest underfit and overfit trials side by side")
        figure.get_by_text("study.png", exact=True).last.wait_for()  # the viewer's heading
        figure.locator("img[src^='blob:']").first.wait_for()  # the figure, fetched and shown
        _shot(figure, shots, "study-figure")
        figure.close()

        sorted_table = _open_link(page, "trials, best first")
        sorted_table.locator("[role=row] a[href*='/runs/']").nth(TRIALS).wait_for()
        assert "orderByKey=metrics.%60best_val_loss%60" in sorted_table.url
        losses = [
            float(text)
            for text in sorted_table.locator(
                "[col-id='metrics.`best_val_loss`']"
            ).all_inner_texts()
            if text.strip() not in ("", "-") and not text.startswith("best_val_loss")
        ]
        assert losses == sorted(losses) and len(losses) >= TRIALS, losses
        assert_training_view(sorted_table, "trials-best-first", shots)
        sorted_table.close()

        plots = _open_link(page, "Interactive plots")
        frame = plots.frame_locator("iframe").first
        frame.locator(".plotly-graph-div").nth(3).wait_for()
        assert frame.locator(".plotly-graph-div").count() == 4
        frame.get_by_text("Optimization history").first.wait_for()
        _shot(plots, shots, "study-interactive-plots")
        browser.close()
    print(f"screenshots: {shots}")


def _big_study(uri: str, n_trials: int) -> str:
    """A study of `n_trials` trials made directly in the store (no training): a parent and a
    child each with params, outcome metrics and tags, and the table settings a study keeps."""
    import random

    from mlflow.entities import Metric, Param, RunTag

    from study.tracking import Store
    from study.ui import save_state, study_state

    store = Store.from_uri(uri)
    client = store.client()
    experiment_id = store.experiment_id(client, "big")
    parent = client.create_run(experiment_id, run_name="study big").info.run_id
    client.set_tag(parent, "fit", "study")
    rng = random.Random(0)
    values: dict[str, float] = {}
    for number in range(n_trials):
        run_id = client.create_run(
            experiment_id, run_name=f"trial {number:03d}", tags={"mlflow.parentRunId": parent}
        ).info.run_id
        loss = round(rng.uniform(0.1, 0.7), 4)
        values[run_id] = loss
        verdict = rng.choice(["good", "underfit", "overfit", "pruned"])
        client.log_batch(
            run_id,
            metrics=[
                Metric("best_val_loss", loss, 0, 0),
                Metric("best_epoch", rng.randint(1, 40), 0, 0),
                Metric("stopped_epoch", 50, 0, 0),
            ],
            params=[
                Param("optimizer.lr", f"{10 ** rng.uniform(-4, -1):.3g}"),
                Param("data.batch_size", str(rng.choice([16, 32, 64, 128]))),
                Param("model.dropout", f"{rng.uniform(0, 0.5):.3f}"),
            ],
            tags=[RunTag("fit", verdict), RunTag("trial_state", "COMPLETE")],
        )
        client.set_terminated(run_id)
    client.set_terminated(parent)
    best = sorted(values, key=values.__getitem__)
    params = ["optimizer.lr", "data.batch_size", "model.dropout"]
    save_state(client, experiment_id, study_state(params, parent))
    return best[0]


def test_a_200_trial_study_opens_usable_and_a_stored_genai_choice_still_opens_training(
    tmp_path: Path,
) -> None:
    _need_browser()
    from playwright.sync_api import sync_playwright

    from study.tracking import sorted_runs_url

    shots = tmp_path / "screenshots"
    shots.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    best = _big_study(uri, 200)
    best_name = MlflowClient(uri).get_run(best).info.run_name
    with ui(uri) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.set_default_timeout(PAGE_WAIT_MS)
        began = time.monotonic()
        page.goto(dict(server.links)["big"])
        rows = page.locator("[role=row][row-index] a[href*='/runs/']")
        rows.first.wait_for()
        first_row_s = time.monotonic() - began
        rows.nth(20).wait_for()  # the parent expanded: its trials nested under it
        _shot(page, shots, "200-trials")
        assert _row(page, 0).inner_text() == "study big"
        assert _cell(page, "trial 199", "params.`optimizer.lr`").inner_text() != ""
        # Its first page holds the 100 newest trials; sorted best first, the 100 best.
        experiment = MlflowClient(uri).get_experiment_by_name("big")
        assert experiment is not None
        began = time.monotonic()
        page.goto(f"{server.url}/{sorted_runs_url(experiment.experiment_id, 'best_val_loss')}")
        rows.first.wait_for()
        sorted_s = time.monotonic() - began
        page.get_by_role("link", name=best_name, exact=True).wait_for()
        _shot(page, shots, "200-trials-best-first")
        assert _row(page, 0).inner_text() == best_name
        print(
            f"200 trials: first row painted {first_row_s:.1f} s after the link was opened, "
            f"{sorted_s:.1f} s sorted best first"
        )

        # A browser that once chose MLflow's GenAI view still opens the training view.
        genai = browser.new_context(viewport={"width": 1400, "height": 900})
        genai.add_init_script(
            "localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('genai'))"
        )
        visit = genai.new_page()
        visit.set_default_timeout(PAGE_WAIT_MS)
        visit.goto(f"{server.url}/#/experiments/{experiment.experiment_id}")
        visit.locator("[role=row] a[href*='/runs/']").first.wait_for()
        assert_training_view(visit, "stored-genai-choice", shots)
        browser.close()
    print(f"screenshots: {shots}")
