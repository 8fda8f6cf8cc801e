"""The fair comparison's report, from a synthetic store written with MlflowClient (no training).

Four optimizers, a budget of 4 trials each, 5 replicate seeds and 5 default-settings seeds:
adam wins clearly; momentum and rmsprop tie; sgd is last and never reaches the target. Planted:
an adam trial with the best test accuracy but not the best validation accuracy (it must not be
selected), a diverged trial and a failed one.
"""

from __future__ import annotations

import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import _empty_store_db
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipeline.sweeps.protocol.analysis import analyse
from pipeline.sweeps.protocol.report import write_protocol_report
from pipeline.sweeps.protocol.runs import load_protocol
from pipeline.sweeps.protocol.tables import markdown

N_TEST = 1000
SEEDS = [1, 2, 3, 4, 5]
DIFFICULTY = np.random.default_rng(0).random(N_TEST)  # the same hard samples for every model
TRIALS = {  # optimizer: [(lr, best val acc, test acc, status)]
    "adam": [
        (3e-4, 0.955, 0.950, "FINISHED"),
        (3e-3, 0.975, 0.969, "FINISHED"),  # best validation accuracy: selected
        (3e-2, 0.965, 0.990, "FINISHED"),  # best test accuracy: must not be selected
        (3e-1, 0.100, None, "DIVERGED"),
    ],
    "momentum": [
        (0.01, 0.950, 0.94, "FINISHED"),
        (0.1, 0.958, 0.95, "FINISHED"),
        (0.3, 0.945, 0.94, "FINISHED"),
        (1.0, None, None, "FAILED"),
    ],
    "rmsprop": [
        (1e-4, 0.945, 0.94, "FINISHED"),
        (1e-3, 0.957, 0.95, "FINISHED"),
        (1e-2, 0.940, 0.93, "FINISHED"),
        (1e-1, 0.100, None, "DIVERGED"),
    ],
    "sgd": [
        (0.01, 0.900, 0.89, "FINISHED"),
        (0.1, 0.930, 0.92, "FINISHED"),
        (0.3, 0.925, 0.92, "FINISHED"),
        (1.0, 0.910, 0.90, "FINISHED"),
    ],
}
SELECTED = {"adam": 3e-3, "momentum": 0.1, "rmsprop": 1e-3, "sgd": 0.1}
DEFAULT_LR = {"adam": 1e-3, "momentum": 0.01, "rmsprop": 1e-3, "sgd": 0.01}
REPLICATE_ACC = {"adam": 0.970, "momentum": 0.950, "rmsprop": 0.9505, "sgd": 0.925}
DEFAULT_ACC = {"adam": 0.962, "momentum": 0.940, "rmsprop": 0.9505, "sgd": 0.900}


def noise(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def correctness(acc: float, *key) -> np.ndarray:
    """Exactly round(acc * N) samples right, mostly the easy ones (models agree on most)."""
    score = DIFFICULTY + noise(*key).normal(0, 0.05, N_TEST)
    correct = np.zeros(N_TEST, dtype=bool)
    correct[np.argsort(score)[: round(acc * N_TEST)]] = True
    return correct


def build_store(tmp: Path) -> tuple[MlflowClient, str]:
    shutil.copy(_empty_store_db(), tmp / "mlflow.db")  # no seconds spent creating tables
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.create_experiment("e", (tmp / "artifacts").as_uri())
    parent = client.create_run(
        experiment, run_name="protocol p1", tags={"sweep.role": "parent", "protocol.id": "p1"}
    ).info.run_id
    settings = {
        "optimizers": ",".join(TRIALS),
        "trials": str(max(len(trials) for trials in TRIALS.values())),
        "tuning_seeds": "1",
        "replicate_seeds": ",".join(map(str, SEEDS)),
        "target_val_acc": "0.95",
        "objective": "val/acc",
    }
    client.log_batch(parent, params=[Param(f"protocol.{k}", v) for k, v in settings.items()])

    def child(stage, optimizer, lr, seed, status, best_val, test, trial=None, correct=None):
        tags = {
            "mlflow.parentRunId": parent,
            "protocol.id": "p1",
            "protocol.stage": stage,
            "protocol.optimizer": optimizer,
            "protocol.seed": str(seed),
        }
        if trial is not None:
            tags["protocol.trial"] = str(trial)
        run = client.create_run(experiment, run_name=f"{stage} {optimizer} lr={lr}", tags=tags)
        run_id = run.info.run_id
        params = {"optimizer.name": optimizer, "optimizer.lr": str(lr), "optimizer.impl": "torch"}
        if optimizer == "momentum":
            params["optimizer.momentum"] = "0.9"
        metrics = []
        if best_val is not None:
            speed = {"adam": 1.0, "momentum": 0.55, "sgd": 0.3}.get(optimizer, 0.5)
            vals = [best_val - 0.03, best_val - 0.01, best_val] if status == "FINISHED" else [0.1]
            metrics += [Metric("val/acc", v, 0, 100 * (i + 1)) for i, v in enumerate(vals)]
            metrics += [
                Metric("epoch_time_s", 1.0 + 0.2 * (optimizer == "adam"), 0, 100 * i)
                for i in range(len(vals))
            ]
            metrics += [
                Metric("train/loss", 2.3 * np.exp(-s * speed / 60) + 0.05 + 0.01 * (seed % 3), 0, s)
                for s in range(10, 100 * len(vals) + 1, 10)
            ]
        if test is not None:
            metrics.append(Metric("test/acc", test, 0, 300))
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        if correct is not None:
            path = tmp / run_id / "test_correct.npy"
            path.parent.mkdir()
            np.save(path, correct)
            client.log_artifact(run_id, str(path))
        if status == "DIVERGED":
            client.set_tag(run_id, "diverged", "true")
            client.set_tag(run_id, "error", "loss is nan at step 130")
        elif status == "FAILED":
            client.set_tag(run_id, "error", "RuntimeError: out of memory")
        client.set_terminated(run_id, "FAILED" if status == "DIVERGED" else status)

    for optimizer, trials in TRIALS.items():
        for number, (lr, val, test, status) in enumerate(trials):
            child("tune", optimizer, lr, 1, status, val, test, trial=number)
        for seed in SEEDS:
            for stage, lr, base in (
                ("replicate", SELECTED[optimizer], REPLICATE_ACC[optimizer]),
                ("default", DEFAULT_LR[optimizer], DEFAULT_ACC[optimizer]),
            ):
                acc = base + noise(stage, optimizer, seed).normal(0, 0.002)
                correct = correctness(acc, stage, optimizer, seed)
                child(
                    stage,
                    optimizer,
                    lr,
                    seed,
                    "FINISHED",
                    acc + 0.005,
                    correct.mean(),
                    correct=correct,
                )
    return client, parent


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocol")
    client, parent = build_store(tmp)
    folder = write_protocol_report(client, parent, tmp / "reports")
    return client, parent, folder, tmp


def tables(markdown: str) -> dict[str, dict[str, dict[str, str]]]:
    """report.md's tables by their second column's header: {header: {optimizer: row}} (rows
    keyed by their first cell where there is no optimizer column)."""
    found, header = {}, None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            found[cells[1]] = {}
        elif not set(line) <= set("|-"):
            row = dict(zip(header, cells, strict=True))
            found[header[1]][row.get("optimizer", cells[0])] = row
    return found


def test_selected_setting_is_the_best_validation_trial(reported):
    _, _, folder, _ = reported
    table = pd.read_csv(folder / "report.csv").set_index("optimizer")
    assert table.loc["adam", "selected.optimizer.lr"] == pytest.approx(3e-3)  # not 3e-2
    assert table.loc["momentum", "selected.optimizer.lr"] == pytest.approx(0.1)
    adam = tables((folder / "report.md").read_text())["trials run / budget"]["adam"]
    assert list(adam.values()) == ["adam", "4 / 4", "0", "1", "lr=0.003", "lr=0.001", "0.9750"]


def test_budget_counts_failed_and_diverged_trials(reported):
    _, _, folder, _ = reported
    table = pd.read_csv(folder / "report.csv").set_index("optimizer")
    assert table.loc["momentum", ["trials", "failed_trials", "diverged_trials"]].tolist() == [
        4,
        1,
        0,
    ]
    assert table.loc["rmsprop", ["trials", "failed_trials", "diverged_trials"]].tolist() == [
        4,
        0,
        1,
    ]
    text = (folder / "report.md").read_text()
    assert "- DIVERGED: tune adam trial 3 seed 1 (lr=0.3)" in text
    assert "loss is nan at step 130" in text and "RuntimeError: out of memory" in text


def test_clear_winner_and_tie(reported):
    _, _, folder, _ = reported
    text = (folder / "report.md").read_text()
    pairs = pd.read_csv(folder / "pairwise.csv")
    verdicts = {(a, b): v for a, b, v in pairs[["a", "b", "verdict"]].itertuples(index=False)}
    assert verdicts[("adam", "momentum")] == verdicts[("adam", "rmsprop")] == "better"
    assert verdicts[("adam", "sgd")] == "better"
    tie = verdicts.get(("rmsprop", "momentum"), verdicts.get(("momentum", "rmsprop")))
    assert tie == "no detectable difference"
    assert "**adam wins**" in text
    assert "- vs rmsprop: +0.02" in text and "adam better." in text  # compare-to-best lines
    assert "Compare-to-best: adam against each other optimizer" in text
    assert "p Holm-adjusted over all 6 pairs" in text
    ranking = tables(text)["optimizer"]
    places = {n: r["places the verdicts allow"] for n, r in ranking.items()}
    assert places == {"adam": "1", "momentum": "2–3", "rmsprop": "2–3", "sgd": "4"}
    assert ranking["momentum"]["no detectable difference from"] == "rmsprop"
    p_beats = pairs.set_index(["a", "b"]).loc[("adam", "sgd")]
    assert p_beats["p_a_beats_b"] == 1.0 and p_beats["detectable_80"] > 0
    table = pd.read_csv(folder / "report.csv").set_index("optimizer")
    assert table.loc["momentum", "gain_verdict"] == "better"
    assert table.loc["rmsprop", "gain_verdict"] == "no detectable difference"


def test_steps_to_target_infinite_when_never_reached(reported):
    _, _, folder, _ = reported
    text = (folder / "report.md").read_text()
    results = tables(text)["tuned test acc [95% CI over seeds, test examples]"]
    reach = [
        results[o][f"{what} to val acc ≥ 0.95"]
        for o in ("adam", "sgd")
        for what in ("steps", "seconds")
    ]
    assert reach == ["201 (5/5)", "2.40 (5/5)", "not reached (0/5)", "not reached (0/5)"]


def test_rereporting_adds_report_2_and_keeps_report(reported):
    client, parent, folder, tmp = reported
    assert folder.name == "report"
    before = Path(client.download_artifacts(parent, "report/report.md", str(tmp / "a"))).read_text()
    again = write_protocol_report(client, parent, tmp / "reports")
    assert again.name == "report-2" and (folder / "report.md").read_text() == before
    names = {f.path for f in client.list_artifacts(parent)}
    assert {"report", "report-2"} <= names
    after = Path(client.download_artifacts(parent, "report/report.md", str(tmp / "b"))).read_text()
    assert after == before
    assert {f.path.split("/")[-1] for f in client.list_artifacts(parent, "report-2")} >= {
        "report.md",
        "report.csv",
        "pairwise.csv",
    }


def test_figures_exist(reported):
    client, parent, folder, _ = reported
    for name in ("sensitivity.png", "expected_best.png", "curves.png"):
        assert (folder / name).read_bytes().startswith(b"\x89PNG"), name
        assert (folder / name).stat().st_size > 20_000, name
    assert {"report/sensitivity.png", "report/curves.png"} <= {
        f.path for f in client.list_artifacts(parent, "report")
    }


def test_compare_script_writes_the_protocol_report(reported):
    client, parent, _, tmp = reported
    import compare  # scripts/compare.py (conftest puts scripts/ on the path)

    out = tmp / "by-script"
    assert (
        compare.main(["--sweep", parent, "--out", str(out), f"tracking.uri={client.tracking_uri}"])
        == 0
    )
    [folder] = out.iterdir()
    assert folder.name.startswith("report-") and (folder / "report.md").is_file()


def test_a_tie_at_the_top_names_no_winner(reported):
    """adam's replicates replaced (in memory) by ones as good as rmsprop's: no single winner."""
    client, parent, _, _ = reported
    protocol = load_protocol(client, parent)
    for run in protocol.of("replicate", "adam"):
        acc = REPLICATE_ACC["rmsprop"] + noise("tied", run.seed).normal(0, 0.002)
        run.correct = correctness(acc, "tied", run.seed)
        run.test_acc = run.correct.mean()
    a = analyse(protocol)
    text = markdown(a)
    assert "**No single winner.**" in text and "wins**" not in text
    top = a.order[0]
    assert a.ranks[top].best == 1 and a.ranks[top].worst > 1 and a.ranks[top].tied_with
    ranking = tables(text)["optimizer"]
    assert {ranking[n]["places the verdicts allow"] for n in ("adam", "momentum", "rmsprop")} == {
        "1–3"
    }
    assert ranking["sgd"]["places the verdicts allow"] == "4"
    assert "not detectably different; a difference below ~0.0" in text


def test_a_difference_that_rounds_to_zero_has_no_minus_sign():
    from pipeline.sweeps.protocol.tables import num

    assert num(-0.00001, signed=True) == "+0.0000"
    assert num(-0.00006, signed=True) == "-0.0001"
    assert num(0.12345) == "0.1235" and num(float("nan")) == "—"


def links(markdown_text: str) -> list[str]:
    """The targets of the report's markdown links that are not images or web addresses."""
    found = re.findall(r"(?<!!)\[[^\]]*\]\(([^)]+)\)", markdown_text)
    return [t for t in found if not t.startswith(("http://", "https://"))]


def resolves(folder: Path, target: str) -> bool:
    """`target` (path#anchor) leads from `folder` to a file with that heading."""
    page, _, anchor = target.partition("#")
    path = folder / page
    if not path.is_file():
        return False
    headings = [line.lstrip("#").strip() for line in path.read_text().splitlines()]
    slugs = {h.lower().replace(" ", "-") for h in headings if h}
    return not anchor or anchor in slugs


def test_the_reports_link_to_the_docs_resolves(reported):
    _, _, folder, _ = reported
    targets = links((folder / "report.md").read_text())
    assert targets and all(resolves(folder, t) for t in targets), targets


def test_the_committed_example_reports_links_resolve():
    from conftest import ROOT

    from pipeline.sweeps.protocol.tables import docs_link

    folder = ROOT / "docs" / "fair_comparison"
    assert docs_link(folder) == "../sweeps-and-reports.md#how-the-comparison-is-judged"
    targets = links((folder / "report.md").read_text())
    assert targets and all(resolves(folder, t) for t in targets), targets
