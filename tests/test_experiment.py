"""Sweeps and the comparison report, on a small synthetic shop (Nov 2000 - Feb 2001).

A sweep of a few trials against a temporary MLflow store: nested runs, pruning, a best config that
``TrainConfig.from_toml`` loads; the sweep never reads the test window (its split is January, and
trial scores do not move when February changes); the report command writes every expected row.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from features.build import build_features
from features.config import FeatureConfig
from recsys.cli import app
from recsys.data.ingest import ingest
from recsys.data.mapping import resolve_source
from recsys.data.synth import SynthSpec, synthesize
from recsys.errors import InputError
from training.config import EvaluationConfig, TrainConfig
from training.experiment.config import ModelSpace, SweepConfig
from training.experiment.sweep import run_sweep
from training.experiment.toml_writer import dumps_toml, write_train_config
from training.experiment.trials import POST_FIT_STEP, TrialOutcome, TrialRunner
from training.report import MOST_ACTIVE, RANDOM, ReportConfig, evaluate_targets, sweep_sections

pytestmark = [  # MLflow 3.17 against SQLAlchemy 2.1 and pandas 3: noise from inside MLflow
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
    pytest.mark.filterwarnings("ignore:Method expects CSR input"),
]

REPO = Path(__file__).resolve().parents[1]
VALIDATION, TEST, END = date(2001, 1, 1), date(2001, 2, 1), date(2001, 3, 1)
SPEC = SynthSpec(members=300, products=120, lines=15_000, categories=10, seed=3,
                 start=date(2000, 11, 1), end=date(2001, 2, 28))


def _features(canonical: Path, folder: Path) -> None:
    for day in (VALIDATION, TEST):
        build_features(canonical, folder / day.isoformat(), day, FeatureConfig(), memory_limit="1GB", threads=1)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``DATA/shop`` (canonical + features as of the validation and the test cutoffs) and
    ``DATA/shop_other_feb``: the same purchases before February, none in February."""
    root = tmp_path_factory.mktemp("shop")
    synthesize(SPEC, root / "src")
    ingest(resolve_source(str(root / "src" / "mapping.toml"), root), root / "shop" / "canonical")
    _features(root / "shop" / "canonical", root / "shop" / "features")
    other = root / "shop_other_feb" / "canonical"
    shutil.copytree(root / "shop" / "canonical", other)
    tx = pq.read_table(other / "transactions.parquet")
    pq.write_table(tx.filter(pc.less(tx["ts"], datetime(2001, 2, 1))), other / "transactions.parquet")
    _features(other, root / "shop_other_feb" / "features")
    return root


SWEEP_TOML = """
[sweep]
name = "tiny"
metric = "recall@10"
n_trials = 9
seed = 0
startup_trials = 3
subsample = 0.3
prune_every_iterations = 2
extra_protocols = {extra}

[pruner]
kind = "percentile"
percentile = 25.0
startup_trials = 2
min_trials = 1
per_model = false

[validation]
cutoff = 2001-01-01
end = 2001-02-01

[data]
dataset = "{dataset}"
data_dir = "{data_dir}"
cutoff = 2001-02-01
test_end = 2001-03-01

[evaluation]
ks = [10, 20]
audience_sizes = [20, 50]
next_basket = false

[mlflow]
experiment = "shop"
registered_model = "recsys-shop"

[models.als]
seed = 0
num_threads = 1
factors = {{ type = "int", low = 4, high = 16, log = true }}
iterations = 8
weighting = {{ choices = ["count", "bm25", "recency"] }}
bm25_k1 = {{ type = "float", low = 1.0, high = 100.0, log = true, when = {{ weighting = "bm25" }} }}
half_life_days = {{ type = "float", low = 7.0, high = 60.0, when = {{ weighting = "recency" }} }}

[models.top_frequency]
recency_half_life_days = {{ type = "float", low = 3.0, high = 90.0, log = true, optional = true }}

[models.popular]
by = {{ choices = ["buyers", "occasions"] }}
"""


def sweep_config(tmp_path: Path, data_dir: Path, dataset: str = "shop", extra: str = "[]") -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP_TOML.format(dataset=dataset, data_dir=data_dir.as_posix(), extra=extra))
    return path


# ------------------------------------------------------------------------------ the sweep
def test_sweep_logs_nested_runs_prunes_and_writes_a_config_train_loads(shop: Path, tmp_path: Path, store: str) -> None:
    path = sweep_config(tmp_path, shop)
    cfg = SweepConfig.from_toml(path)
    best = tmp_path / "best.toml"
    result = run_sweep(cfg, config_path=path, tracking_uri=store, best_out=best)

    assert result.counts["trials"] == 9 and result.counts["failed"] == 0
    assert result.counts["pruned"] >= 1 and result.counts["complete"] >= 1
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("shop-sweeps")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = client.get_run(result.run_id)
    assert parent.data.tags["recsys.sweep"] == "true" and parent.data.metrics["n_trials"] == 9
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.run_id]
    trials = [r for r in children if "optuna.trial" in r.data.tags]
    assert len(trials) == 9 and len(children) == 10  # 9 trials + the best config on the test window
    states = {r.data.tags["optuna.state"] for r in trials}
    assert states <= {"COMPLETE", "PRUNED"} and "PRUNED" in states
    for r in trials:
        assert r.data.params["model.name"] in ("als", "top_frequency", "popular")
        if r.data.tags["optuna.state"] == "COMPLETE":
            assert "recall_at_10" in r.data.metrics
    pruned = next(r for r in trials if r.data.tags["optuna.state"] == "PRUNED")
    assert client.get_metric_history(pruned.info.run_id, "intermediate_recall_at_10")  # what the pruner saw
    # the best config: loads as a `recsys train` config on the test window, with the best params
    train_cfg = TrainConfig.from_toml(best)
    assert (train_cfg.data.cutoff, train_cfg.data.test_end) == (TEST, END)
    assert train_cfg.model.name == result.best_model
    assert train_cfg.model_params() == type(train_cfg.model_params())(**result.best_params)
    assert train_cfg.mlflow.registered_model == "recsys-shop"
    assert "recall@10" in result.test_metrics  # reported once on the test window
    # the report reads the newest sweep back from MLflow: its section and the sweep target
    report_cfg = ReportConfig.model_validate({
        "report": {"sweep_experiment": "shop-sweeps", "sweeps": ["tiny"]},
        "data": {"dataset": "shop", "data_dir": str(shop), "cutoff": TEST, "test_end": END},
        "rows": [{"label": "GP-TopFreq", "model": "top_frequency"}],
        "targets": [{"text": "fast sweep", "kind": "sweep", "sweep": "tiny", "min_trials": 9, "max_minutes": 30}],
    })
    section = "\n".join(sweep_sections(report_cfg, store))
    assert f"**Sweep `tiny`** (run `{result.run_id[:8]}`" in section and "9 trials" in section
    assert f"`{result.best_model}`" in section
    [target] = evaluate_targets(report_cfg, {}, store)
    assert target["holds"] is True and "9 trials" in target["detail"]


def test_als_trials_report_every_few_iterations_and_after_the_fit(shop: Path, tmp_path: Path) -> None:
    cfg = SweepConfig.from_toml(sweep_config(tmp_path, shop))
    runner = TrialRunner(cfg, tmp_path)
    out = TrialOutcome("als", {})
    trial = optuna.trial.FixedTrial({})
    value = runner.run(trial, "als", {"factors": 4, "iterations": 8, "num_threads": 1, "weighting": "count"}, out)
    assert [s for s, _ in out.intermediate] == [2, 4, 6, POST_FIT_STEP]
    assert value == out.metrics["recall@10"] and len(out.curve) == 8


def test_the_sweep_never_reads_the_test_window(shop: Path, tmp_path: Path) -> None:
    """Tuned on January: the split is [2001-01-01, 2001-02-01), and changing every February
    purchase changes no trial's score, in any protocol."""
    scores = []
    for dataset in ("shop", "shop_other_feb"):
        cfg = SweepConfig.from_toml(sweep_config(tmp_path, shop, dataset, extra='["audiences", "next_basket"]'))
        runner = TrialRunner(cfg, tmp_path / dataset)
        assert (runner.split.cutoff, runner.split.end) == (VALIDATION, TEST)
        nbr = pq.read_table(tmp_path / dataset / "transactions_before_validation_end.parquet")
        assert pc.max(nbr["ts"]).as_py() < datetime(2001, 2, 1)
        got = {}
        for name, params in (("als", {"factors": 4, "iterations": 3, "num_threads": 1}), ("top_frequency", {})):
            out = TrialOutcome(name, params)
            runner.run(optuna.trial.FixedTrial({}), name, params, out)
            got[name] = out.metrics
        assert {"recall@10", "audience_known_recall@20", "nbr_recall@10"} <= set(got["als"])
        scores.append(got)
    assert scores[0] == scores[1]


def test_a_trial_on_two_validation_windows_scores_their_mean(shop: Path, tmp_path: Path) -> None:
    from training.experiment.windows import WindowsRunner

    two = sweep_config(tmp_path, shop).read_text().replace(
        "[validation]\ncutoff = 2001-01-01\nend = 2001-02-01",
        "[[validation]]\ncutoff = 2000-12-01\nend = 2001-01-01\n\n[[validation]]\ncutoff = 2001-01-01\nend = 2001-02-01")
    (tmp_path / "two.toml").write_text(two)
    cfg = SweepConfig.from_toml(tmp_path / "two.toml")
    assert [w.label for w in cfg.validation] == ["2000-12", "2001-01"]
    runner = WindowsRunner(cfg, tmp_path / "work")  # builds December's missing features snapshot
    assert (shop / "shop" / "features" / "2000-12-01" / "manifest.json").exists()
    out = TrialOutcome("top_frequency", {})
    value = runner.run(optuna.trial.FixedTrial({}), "top_frequency", {}, out)
    alone = []
    for i in range(2):  # each window on its own gives that window's figure
        one = TrialOutcome("top_frequency", {})
        alone.append(TrialRunner(cfg.for_window(i), tmp_path / f"one{i}").run(optuna.trial.FixedTrial({}),
                                                                             "top_frequency", {}, one))
        assert out.metrics[f"{cfg.validation[i].label}.recall@10"] == one.metrics["recall@10"]
    assert alone[0] != alone[1]
    assert value == pytest.approx((alone[0] + alone[1]) / 2) == out.metrics["recall@10"]


def test_a_validation_window_reaching_into_the_test_window_is_refused(shop: Path, tmp_path: Path) -> None:
    path = sweep_config(tmp_path, shop)
    path.write_text(path.read_text().replace("end = 2001-02-01", "end = 2001-02-15"))
    with pytest.raises(InputError, match="validation window ends 2001-02-15"):
        SweepConfig.from_toml(path)


@pytest.mark.parametrize("change, message", [
    (("factors = {", "factor = {"), "not a param of 'als'"),
    (('metric = "recall@10"', 'metric = "recall@15"'), "not one the evaluation produces"),
    (("when = { weighting = \"bm25\" }", "when = { alpha = 2 }"), None),
    (("[models.popular]", "[models.nope]"), "unknown model 'nope'"),
])
def test_a_bad_search_space_fails_before_any_trial(shop: Path, tmp_path: Path, change: tuple[str, str],
                                                   message: str | None) -> None:
    path = sweep_config(tmp_path, shop)
    text = path.read_text()
    assert change[0] in text.replace("{{", "{")
    path.write_text(text.replace(*change))
    if message is None:  # a `when` on a param that is fixed / default is fine
        SweepConfig.from_toml(path)
        return
    with pytest.raises(InputError, match=message):
        SweepConfig.from_toml(path)


def test_the_pruner_compares_a_trial_with_its_own_model() -> None:
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from training.experiment.pruning import PercentilePruner

    dist = {"model": CategoricalDistribution(["als", "top_frequency"])}
    study = optuna.create_study(direction="maximize")
    for model, value in [("top_frequency", 0.10), ("top_frequency", 0.11), ("als", 0.05), ("als", 0.07)]:
        study.add_trial(create_trial(params={"model": model}, distributions=dist, value=value,
                                     intermediate_values={POST_FIT_STEP: value}))

    def running(model: str, value: float) -> Any:
        return create_trial(params={"model": model}, distributions=dist, state=TrialState.RUNNING,
                            intermediate_values={POST_FIT_STEP: value})

    per_model = PercentilePruner(50.0, startup=2, warmup=0, min_trials=1, per_model=True)
    across = PercentilePruner(50.0, startup=2, warmup=0, min_trials=1, per_model=False)
    assert not per_model.prune(study, running("als", 0.065))  # above the ALS median (0.06)
    assert per_model.prune(study, running("als", 0.055))
    assert across.prune(study, running("als", 0.065))  # below the median of all (0.085)
    assert per_model.prune(study, running("top_frequency", 0.10))  # below 0.105


def test_search_space_conditions_and_optional_params() -> None:
    space = ModelSpace.parse("als", {
        "seed": 3,
        "weighting": {"choices": ["count", "bm25"]},
        "bm25_k1": {"type": "float", "low": 1.0, "high": 10.0, "when": {"weighting": "bm25"}},
        "factors": {"choices": [8, 16]},
    })
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        params = space.sample(study.ask())
        assert params["seed"] == 3 and params["factors"] in (8, 16)
        assert ("bm25_k1" in params) == (params["weighting"] == "bm25")
        seen.add(params["weighting"])
    assert seen == {"count", "bm25"}
    tf = ModelSpace.parse("top_frequency", {"recency_half_life_days": {"low": 1.0, "high": 9.0, "optional": True}})
    values = {tf.sample(study.ask())["recency_half_life_days"] is None for _ in range(20)}
    assert values == {True, False}


def test_written_config_reads_back_with_dates_lists_and_none(tmp_path: Path) -> None:
    base = TrainConfig.from_toml(REPO / "experiments" / "configs" / "default.toml")
    cfg = base.model_copy(update={"model": base.model.model_copy(update={"name": "top_frequency",
                                                                          "params": {"recency_half_life_days": None}})})
    back = TrainConfig.from_toml(write_train_config(cfg, tmp_path / "a.toml", header=["a header"]))
    assert back.model_params().recency_half_life_days is None
    hybrid = base.model_copy(deep=True)
    back = TrainConfig.from_toml(write_train_config(hybrid, tmp_path / "b.toml"))
    assert back.model_params() == hybrid.model_params() and back.data == hybrid.data
    doc = {"a": 1.5, "d": date(2001, 1, 24), "t": {"l": ["x", 2], "u": {"k": "引号\"", "b": False}}}
    assert tomllib.loads(dumps_toml(doc)) == doc


# ------------------------------------------------------------------------------ the report
def tiny_report_config(shop: Path, tmp_path: Path) -> Path:
    raw = tomllib.loads((REPO / "experiments" / "configs" / "report.toml").read_text())
    raw["data"].update(dataset="shop", data_dir=shop.as_posix())
    raw["evaluation"].update(audience_sizes=[20, 50, 100])
    raw["user_split"] = {"folds": 2, "seed": 0}  # the protocol's folds, fewer of them
    if "next_basket_process" in EvaluationConfig.model_fields:
        raw["evaluation"]["next_basket_process"] = False  # a spawned interpreter per row costs more than a tiny row
    for row in raw["rows"]:
        if row.get("optional"):  # the sweep's best config: absent here, so the row is skipped
            row["config"] = (tmp_path / "no_sweep_yet.toml").as_posix()
        elif row.get("config"):
            row["config"] = (REPO / row["config"]).as_posix()
        if row["label"] == "hybrid":  # the default model, small enough for a unit test
            row["params"] = {"n_estimators": 20, "factors": 8, "iterations": 3, "num_threads": 1}
        if row.get("model") == "bpr":
            row["params"] = {**row.get("params", {}), "iterations": 10, "factors": 8}
        if row.get("model") == "als":
            row["params"] = {"factors": 8, "iterations": 3, "num_threads": 1}
    path = tmp_path / "report.toml"
    path.write_text(dumps_toml(raw))
    return path


def test_report_writes_every_row_of_every_table(shop: Path, tmp_path: Path, store: str) -> None:
    path = tiny_report_config(shop, tmp_path)
    cfg = ReportConfig.from_toml(path)
    out = tmp_path / "out" / "REPORT.md"
    result = CliRunner().invoke(app, ["experiment", "report", "--config", str(path), "--out", str(out),
                                      "--tracking-uri", store])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    sections = text.split("\n## ")
    by_title = {s.splitlines()[0]: s for s in sections}

    def section(prefix: str) -> str:
        return next(v for k, v in by_title.items() if k.startswith(prefix))

    def table_rows(body: str) -> list[str]:
        cells = [line.split("|")[1].strip() for line in body.splitlines() if line.startswith("| ")]
        return [c for c in cells[1:] if not c.startswith("---")]  # no header, no alignment row

    def labels(table: str) -> list[str]:
        return [r.label for r in cfg.rows if table in r.tables and not r.optional]

    def plain(rows: list[str]) -> list[str]:
        return [r.replace(" **(default)**", "") for r in rows]

    assert plain(table_rows(section("Person → product: temporal split"))) == labels("picks")
    assert plain(table_rows(section("Person → product: next-basket protocol"))) == labels("next_basket")
    for group in ("products sold before", "products never sold before", "the same never-sold products described"):
        rows = plain(table_rows(section(f"Product → person: audiences for {group}")))
        assert rows == [RANDOM, MOST_ACTIVE, *labels("audiences")]
    assert "Skipped (config not found): sweep best, hybrid, swept." in text  # optional rows without their config
    # the rows marked for it, again on each validation window, with their mean, beside their test figures
    val = section("The same rows on the validation windows")
    want = [r.label for r in cfg.rows if r.validation and not r.optional]
    assert len(want) >= 3 and [w.label for w in cfg.validation] == ["2000-12", "2001-01"]
    subtables = val.split("\n**")[1:]
    assert [t.split("**")[0] for t in subtables] == [
        "Recall@10", "NDCG@10", "known products: lift vs most-active@50", "never-sold products: lift vs most-active@50",
        "never-sold products by attributes alone: lift vs most-active@50", "known products: expected / actual buyers@50",
        "never-sold products: expected / actual buyers@50"]
    calibrated = [r.label for r in cfg.rows if r.validation and not r.optional and r.label == "hybrid"]
    for i, sub in enumerate(subtables):
        assert plain(table_rows(sub)) == (want if i < 5 else calibrated)  # only the hybrid gives probabilities
        for line in [x for x in sub.splitlines() if x.startswith("| ")][2:]:
            if i >= 5 and "—" in line:  # calibration: no test buyer in a window's audiences (the tiny shop)
                continue
            cells = [float(c.strip()) for c in line.split("|")[2:-1]]
            assert len(cells) == 4 and all(np.isfinite(cells)), line
            assert cells[2] == pytest.approx((cells[0] + cells[1]) / 2, abs=0.0051)  # the mean of the two
    for line in [x for x in subtables[0].splitlines() if x.startswith("| ")][2:]:
        label = line.split("|")[1].strip()
        if plain([label])[0] in labels("picks"):  # Recall@10 on the test window: the picks table's
            test_row = next(x for x in section("Person → product: temporal split").splitlines()
                            if x.startswith(f"| {label} |"))
            assert line.split("|")[5].strip() == test_row.split("|")[2].strip()
    # the published user split: every row asked for it, mean ± sd over the folds
    us = section("Person → product: next-basket protocol, the published user split")
    assert plain(table_rows(us)) == labels("user_split")
    assert "TIFUKNN" in labels("user_split") and "±" in us
    # quality.json: every figure as records, the same numbers as the tables
    quality = json.loads((out.parent / "results" / "quality.json").read_text())
    recs = quality["records"]
    hybrid_feb = next(r for r in recs if r["protocol"] == "temporal" and r["window"] == "2001-02"
                      and r["model"] == "hybrid")
    feb_row = next(x for x in section("Person → product: temporal split").splitlines() if x.startswith("| hybrid "))
    assert f"{hybrid_feb['recall@10']:.3f}" == feb_row.split("|")[2].strip()
    windows = {r["window"] for r in recs if r["protocol"] == "temporal" and r["model"] == "hybrid"}
    assert windows == {"2000-12", "2001-01", "2001-02", "validation_mean"}
    mean = next(r for r in recs if r["protocol"] == "temporal" and r["window"] == "validation_mean"
                and r["model"] == "hybrid")
    per = [r["recall@10"] for r in recs if r["protocol"] == "temporal" and r["model"] == "hybrid"
           and r["window"] in ("2000-12", "2001-01")]
    assert mean["recall@10"] == pytest.approx(sum(per) / 2)
    kinds = {(r["model"], r["kind"]) for r in recs if r["protocol"] == "audience" and r["window"] == "2001-02"}
    assert {("hybrid", "sold"), ("hybrid", "never_sold"), ("hybrid", "never_sold_attributes"), (MOST_ACTIVE, "sold"),
            ("category buyers", "never_sold"), ("category buyers", "never_sold_attributes")} <= kinds
    for kind in ("sold", "never_sold", "never_sold_attributes"):  # calibration and recall@N of the hybrid per window
        for w in ("2000-12", "2001-01", "2001-02", "validation_mean"):
            rec = next(r for r in recs if r["protocol"] == "audience" and r["model"] == "hybrid" and r["kind"] == kind
                       and r["window"] == w)
            assert {"recall@50", "recall@100", "lift_most_active", "expected_buyers@50"} <= set(rec), (kind, w)
            if w != "validation_mean" and rec["actual_buyers@50"] > 0:
                assert rec["expected_over_actual@50"] == pytest.approx(
                    rec["expected_buyers@50"] / rec["actual_buyers@50"])
    active = next(r for r in recs if r["protocol"] == "audience" and r["model"] == MOST_ACTIVE and r["kind"] == "sold"
                  and r["window"] == "2001-02")
    assert active["lift_most_active"] == pytest.approx(1.0)
    assert {r["model"] for r in recs if r["protocol"] == "user_split"} == set(labels("user_split"))
    assert all("recall@10_sd" in r and r["folds"] == 2 for r in recs if r["protocol"] == "user_split")
    assert {r["model"] for r in recs if r["protocol"] == "next_basket"} == set(labels("next_basket"))
    targets = section("Targets")
    for t in cfg.targets:
        assert t.text in targets
    assert "not measured: no finished sweep 'picks'" in targets  # no sweep in this store
    assert "Published reference figures" in text and "TIFUKNN" in text
    assert "Sweep `picks`: no finished run yet." in section("Sweeps")  # none in this store
    for png in ("metric_vs_k", "audience_recall_vs_size", "repeat_vs_new"):
        assert (out.parent / "report_plots" / f"{png}.png").stat().st_size > 1000
        assert f"report_plots/{png}.png" in text
    # every number of the tables is a number (the dash only where a metric does not apply)
    picks = [line for line in section("Person → product: temporal split").splitlines() if line.startswith("| ")]
    for line in picks[2:]:
        cells = [c.strip() for c in line.split("|")[2:-1]]
        assert all(np.isfinite(float(c)) for c in cells), line
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name(cfg.report.experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("recsys.report") == "true")
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"REPORT.md", "report.json", "plots"} <= arts
    rows = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    test_runs = [r.data.tags["report.row"] for r in rows if "report.window" not in r.data.tags]
    val_runs = [r.data.tags["report.row"] for r in rows if r.data.tags.get("report.window") == "validation"]
    assert sorted(test_runs) == sorted(r.label for r in cfg.rows if not r.optional)
    assert sorted(val_runs) == sorted(want * 2)  # once per validation window


def test_report_rows_option_and_unknown_rows(shop: Path, tmp_path: Path, store: str) -> None:
    path = tiny_report_config(shop, tmp_path)
    out = tmp_path / "quick.md"
    args = ["experiment", "report", "--config", str(path), "--out", str(out), "--tracking-uri", store]
    result = CliRunner().invoke(app, [*args, "--rows", "GP-TopFreq,nope"])
    assert result.exit_code == 2 and "no row named 'nope'" in result.output
    result = CliRunner().invoke(app, [*args, "--rows", "GP-TopFreq,category buyers"])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "| GP-TopFreq |" in text and "| category buyers |" in text and "| hybrid **(default)** |" not in text


def test_validation_rows_need_a_validation_window(tmp_path: Path) -> None:
    raw = tomllib.loads((REPO / "experiments" / "configs" / "report.toml").read_text())
    assert raw["validation"] and any(r.get("validation") for r in raw["rows"])
    del raw["validation"]
    path = tmp_path / "report.toml"
    path.write_text(dumps_toml(raw))
    with pytest.raises(InputError, match=r"validation = true need a \[validation\] window"):
        ReportConfig.from_toml(path)


def test_validation_windows_must_end_before_the_test_window(tmp_path: Path) -> None:
    raw = tomllib.loads((REPO / "experiments" / "configs" / "report.toml").read_text())
    raw["validation"].append({"cutoff": date(2001, 2, 1), "end": date(2001, 3, 1)})
    path = tmp_path / "report.toml"
    path.write_text(dumps_toml(raw))
    with pytest.raises(InputError, match=r"ends after the test window starts"):
        ReportConfig.from_toml(path)
