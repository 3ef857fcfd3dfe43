"""MLflow tracking, the pyfunc model and the champion gate, against a real (temporary) sqlite store."""

from __future__ import annotations

import json
import math
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_data import MEMBERS, tiny_bundle
from mlflow import MlflowClient

from recsys.bundle import load_bundle, save_bundle
from recsys.errors import InputError, RecsysError
from recsys.models import get_model
from recsys.pyfunc import RecsysPyfuncModel, download_bundle, resolve_tracking_uri
from training.cli_commands import promote_command
from training.tracking import (
    Tracker,
    _beats,
    flatten_params,
    gate_champion,
    git_state,
    log_bundle_model,
    metric_key,
    promote,
)

pytestmark = [  # MLflow 3.17 against SQLAlchemy 2.1 and pandas 3: noise from inside MLflow
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
]
MODEL = "recsys-test"
METRIC = "recall@10"


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return save_bundle(tmp_path / "bundle", tiny_bundle("simple_blend"))


def register(store: str, bundle_dir: Path, value: float | None, run_name: str = "run") -> str:
    """One training run: log the metric, register the bundle; returns the version."""
    with Tracker("gate", run_name, tracking_uri=store) as run:
        if value is not None:
            run.log_metrics({METRIC: value})
        return str(log_bundle_model(run, bundle_dir, MODEL).version)


def aliases(store: str) -> dict[str, str]:
    rm = MlflowClient(tracking_uri=store).get_registered_model(MODEL)
    return {a: str(v) for a, v in rm.aliases.items()}


# ---------------------------------------------------------------------------- names and params
def test_flatten_params_nested_lists_and_limits() -> None:
    flat = flatten_params({
        "model": {"name": "als", "params": {"factors": 64, "alpha": 1.5}},
        "ks": [10, 20, 50],
        "seed": None,
        "as_of": date(2001, 2, 1),
        "stages": [{"name": "a"}, {"name": "b"}],
        "long": "x" * 7000,
        "recall@k": 1,
    })
    assert {k: v for k, v in flat.items() if k != "long"} == {
        "model.name": "als",
        "model.params.factors": "64",
        "model.params.alpha": "1.5",
        "ks": "10,20,50",
        "seed": "None",
        "as_of": "2001-02-01",
        "stages.0.name": "a",
        "stages.1.name": "b",
        "recall_at_k": "1",
    }
    assert len(flat["long"]) == 6000 and flat["long"].endswith("...")


def test_flatten_params_dumps_pydantic_models() -> None:
    params = get_model("als").Params(factors=8)
    flat = flatten_params({"model": params})
    assert flat["model.factors"] == "8" and flat["model.weighting"] == "bm25"


@pytest.mark.parametrize(("name", "key"), [
    ("recall@10", "recall_at_10"),
    ("audience_new_lift_random@1000", "audience_new_lift_random_at_1000"),
    ("train/loss", "train/loss"),
    ("ndcg (val)", "ndcg _val_"),
    ("a//b", "a__b"),
    ("../x", "_.._x"),
    ("plain_name-1.5", "plain_name-1.5"),
])
def test_metric_key_is_mlflow_safe_and_idempotent(name: str, key: str) -> None:
    from mlflow.utils.validation import _validate_metric_name

    assert metric_key(name) == key
    assert metric_key(key) == key
    _validate_metric_name(key)  # raises on a name MLflow would refuse


def test_beats_is_strict() -> None:
    assert _beats(0.3, 0.2, True) and not _beats(0.2, 0.2, True) and not _beats(0.1, 0.2, True)
    assert _beats(1.0, 2.0, False) and not _beats(2.0, 2.0, False)


# ---------------------------------------------------------------------------- tracking URI
def test_default_uri_is_the_local_sqlite_store(store: str, tmp_path: Path) -> None:
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path.resolve() / 'sub/x.db'}"
    assert resolve_tracking_uri(store) == store


def test_env_uri_is_used(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert resolve_tracking_uri() == store
    assert resolve_tracking_uri("sqlite:////elsewhere/m.db") == "sqlite:////elsewhere/m.db"


def test_unreachable_server_fails_fast(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.perf_counter()
    with pytest.raises(RecsysError, match=r"cannot reach the MLflow tracking server at http://127\.0\.0\.1:9"):
        Tracker("x", tracking_uri="http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/")
    with pytest.raises(RecsysError, match="unset MLFLOW_TRACKING_URI"):
        promote(MODEL)
    assert time.perf_counter() - start < 10


# ---------------------------------------------------------------------------- the tracker
def test_run_logs_params_metrics_artifacts_and_curves(store: str, tmp_path: Path) -> None:
    with Tracker("exp", "als-small", tracking_uri=store) as run:
        run.log_params({"model": {"name": "als", "factors": 8}, "ks": [10, 20]})
        logged = run.log_metrics({"recall@10": 0.25, "ndcg@10": float("nan"), "map@10": None, "n": 3})
        for step, loss in enumerate([0.9, 0.5, float("nan"), 0.3]):
            run.log_iteration("loss", step, loss)
        run.log_dict({"recall@10": 0.25}, "eval/summary.json")
        run.set_tags({"dataset": "tiny"})
        run_id = run.run_id
    assert logged == {"recall_at_10": 0.25, "n": 3.0}

    client = MlflowClient(tracking_uri=store)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "als-small"
    assert r.data.params == {"model.name": "als", "model.factors": "8", "ks": "10,20"}
    assert r.data.metrics == {"recall_at_10": 0.25, "n": 3.0, "loss": 0.3}
    assert r.data.tags["dataset"] == "tiny"
    git = git_state()
    if git:  # running from a checkout: the commit is on the run
        assert r.data.tags["git.commit"] == git["git.commit"]
    history = client.get_metric_history(run_id, "loss")
    assert [(h.step, h.value) for h in history] == [(0, 0.9), (1, 0.5), (3, 0.3)]
    files = {f.path for f in client.list_artifacts(run_id, "eval")}
    assert files == {"eval/summary.json"}
    # the artifacts live beside the store, in mlartifacts
    exp = client.get_experiment(r.info.experiment_id)
    assert exp.artifact_location == (tmp_path / "mlartifacts" / "exp").as_uri()
    saved = tmp_path / "mlartifacts" / "exp" / run_id / "artifacts"
    assert json.loads((saved / "eval" / "summary.json").read_text()) == {"recall@10": 0.25}
    assert json.loads((saved / "metric_names.json").read_text()) == {
        "recall@10": "recall_at_10", "ndcg@10": "ndcg_at_10", "map@10": "map_at_10"}


def test_colliding_metric_names_are_refused(store: str) -> None:
    with Tracker("exp", tracking_uri=store) as run:
        run.log_metrics({"recall@10": 0.1})
        with pytest.raises(ValueError, match="both become 'recall_at_10'"):
            run.log_metrics({"recall_at_10": 0.2})


def test_failed_run_is_marked_failed_and_uri_restored(store: str) -> None:
    import mlflow

    with pytest.raises(ZeroDivisionError), Tracker("exp", tracking_uri=store) as run:
        run_id = run.run_id
        1 / 0  # noqa: B018
    assert MlflowClient(tracking_uri=store).get_run(run_id).info.status == "FAILED"
    assert mlflow.active_run() is None
    assert not mlflow.is_tracking_uri_set()


def test_git_state_outside_a_repo_is_empty(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {}


# ---------------------------------------------------------------------------- the pyfunc model
def test_registered_model_predicts_like_the_bundle(store: str, bundle_dir: Path) -> None:
    import mlflow

    version = register(store, bundle_dir, 0.2)
    assert version == "1"
    mv = MlflowClient(tracking_uri=store).get_model_version(MODEL, "1")
    assert mv.tags["recommender"] == "simple_blend" and mv.tags["n_members"] == "6"

    mlflow.set_tracking_uri(store)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    finally:
        mlflow.set_tracking_uri(None)
    out = model.predict(pd.DataFrame({"member_id": ["m0", "stranger", "m3"], "k": [3, 2, 3]}))
    by_params = model.predict(pd.DataFrame({"member_id": ["m0"]}), params={"k": 2, "mode": "discover"})
    assert by_params["product_id"].tolist() == ["p2", "p3"]  # m0 bought p0 and p1 already

    bundle = load_bundle(bundle_dir)
    want, _ = bundle.model.recommend(bundle.members.to_index(["m0", "m3"]), 3, mode="replenish")
    m0 = out[out.member_id == "m0"]
    m3 = out[out.member_id == "m3"]
    assert m0["product_id"].tolist() == bundle.products.to_external(want[0]).tolist()
    assert m3["product_id"].tolist() == bundle.products.to_external(want[1]).tolist()
    assert m0["product_id"].tolist()[0] == "p0"  # m0 is a regular of p0
    assert m0["rank"].tolist() == [1, 2, 3] and not m0["fallback"].any()
    stranger = out[out.member_id == "stranger"]
    assert stranger["product_id"].tolist() == ["p0", "p1"]  # most buyers; p1 before p2 on a tie
    assert stranger["fallback"].all() and stranger["score"].tolist() == [1.0, 0.75]
    assert out["member_id"].tolist() == ["m0"] * 3 + ["stranger"] * 2 + ["m3"] * 3  # input order


def test_pyfunc_modes_and_bad_input() -> None:
    model = RecsysPyfuncModel.from_bundle(tiny_bundle("simple_blend"))
    out = model.predict(None, pd.DataFrame({"member_id": ["m0", "m0"], "k": [2, 2],
                                            "mode": ["replenish", "discover"]}))
    replenish, discover = out.iloc[:2], out.iloc[2:]
    assert replenish["product_id"].tolist() == ["p0", "p1"]
    assert not set(discover["product_id"]) & {"p0", "p1"}  # discover leaves out what m0 bought
    assert len(model.predict(None, pd.DataFrame({"member_id": pd.Series([], dtype=str)}))) == 0
    # a missing k or mode means the default; a missing member id is an error
    defaults = model.predict(None, pd.DataFrame({"member_id": ["m0"], "k": [None], "mode": [pd.NA]}))
    assert defaults["product_id"].tolist()[:2] == ["p0", "p1"] and len(defaults) == 5  # all 5 < k=10
    with pytest.raises(InputError, match="missing in 1 row"):
        model.predict(None, pd.DataFrame({"member_id": pd.Series(["m0", pd.NA], dtype="string")}))
    with pytest.raises(InputError, match="member_id"):
        model.predict(None, pd.DataFrame({"member": ["m0"]}))
    with pytest.raises(InputError, match="between 1 and"):
        model.predict(None, pd.DataFrame({"member_id": ["m0"], "k": [0]}))
    with pytest.raises(InputError, match="'replenish' or 'discover'"):
        model.predict(None, pd.DataFrame({"member_id": ["m0"], "mode": ["surprise"]}))


def test_download_bundle_gives_a_loadable_bundle(store: str, bundle_dir: Path, tmp_path: Path) -> None:
    version = register(store, bundle_dir, 0.2)
    assert gate_champion(MODEL, version, METRIC, 0.2, tracking_uri=store) == "champion"

    local = download_bundle(MODEL, "champion", store, tmp_path / "served")
    assert local.is_relative_to(tmp_path / "served") and (local / "bundle.json").exists()
    got, want = load_bundle(local), load_bundle(bundle_dir)
    members = np.arange(len(MEMBERS))
    np.testing.assert_array_equal(got.model.recommend(members, 3)[0], want.model.recommend(members, 3)[0])
    assert download_bundle(MODEL, "1", store, tmp_path / "by-number").exists()
    with pytest.raises(RecsysError, match="no version with alias 'staging'; aliases: champion -> v1"):
        download_bundle(MODEL, "staging", store)


# ---------------------------------------------------------------------------- the gate
def test_gate_keeps_the_best_version_as_champion(store: str, bundle_dir: Path) -> None:
    client = MlflowClient(tracking_uri=store)

    v1 = register(store, bundle_dir, 0.30)
    assert gate_champion(MODEL, v1, METRIC, 0.30, tracking_uri=store) == "champion"
    assert aliases(store) == {"champion": "1"}

    v2 = register(store, bundle_dir, 0.20)
    assert gate_champion(MODEL, v2, METRIC, 0.20, tracking_uri=store) == "challenger"
    assert aliases(store) == {"champion": "1", "challenger": "2"}
    tags = client.get_model_version(MODEL, v2).tags
    assert tags["gate.decision"] == "challenger" and tags["gate.champion_value"] == "0.3"

    v3 = register(store, bundle_dir, 0.40)
    assert gate_champion(MODEL, v3, METRIC, 0.40, tracking_uri=store) == "champion"
    assert aliases(store) == {"champion": "3", "challenger": "2"}

    v4 = register(store, bundle_dir, 0.40)  # a tie does not replace the champion
    assert gate_champion(MODEL, v4, METRIC, 0.40, tracking_uri=store) == "challenger"
    assert aliases(store) == {"champion": "3", "challenger": "4"}
    assert client.get_model_version(MODEL, v4).tags["gate.reason"].startswith("recall_at_10 0.4 does not beat v3")

    # lower is better (e.g. a loss): 0.35 beats the champion's 0.40
    assert gate_champion(MODEL, v4, METRIC, 0.35, higher_is_better=False, tracking_uri=store) == "champion"
    assert aliases(store) == {"champion": "4"}  # no longer also the challenger

    with pytest.raises(RecsysError, match="has no version 9; versions: 1, 2, 3, 4"):
        gate_champion(MODEL, 9, METRIC, 1.0, tracking_uri=store)


def test_gate_keeps_the_champion_when_it_cannot_compare(store: str, bundle_dir: Path) -> None:
    v1 = register(store, bundle_dir, None)  # the champion's run has no such metric
    assert gate_champion(MODEL, v1, METRIC, 0.1, tracking_uri=store) == "champion"
    v2 = register(store, bundle_dir, 0.9)
    assert gate_champion(MODEL, v2, METRIC, 0.9, tracking_uri=store) == "challenger"
    v3 = register(store, bundle_dir, None)
    assert gate_champion(MODEL, v3, METRIC, math.nan, tracking_uri=store) == "challenger"
    assert aliases(store) == {"champion": "1", "challenger": "3"}


# ---------------------------------------------------------------------------- promote
def test_promote_by_hand(store: str, bundle_dir: Path) -> None:
    for value in (0.3, 0.1, 0.2):
        version = register(store, bundle_dir, value)
        gate_champion(MODEL, version, METRIC, value, tracking_uri=store)
    assert aliases(store) == {"champion": "1", "challenger": "3"}

    assert promote(MODEL, "2", tracking_uri=store) == "2"
    assert aliases(store) == {"champion": "2", "challenger": "3"}
    assert promote_command(MODEL, None, "champion", store) == f"{MODEL} v3 (the latest version) is now 'champion'"
    assert aliases(store) == {"champion": "3"}
    assert promote(MODEL, 1, alias="rollback", tracking_uri=store) == "1"
    assert aliases(store) == {"champion": "3", "rollback": "1"}

    with pytest.raises(RecsysError, match=r"no registered model 'nope'; registered: recsys-test"):
        promote("nope", tracking_uri=store)
    with pytest.raises(RecsysError, match="has no version 7; versions: 1, 2, 3"):
        promote(MODEL, "7", tracking_uri=store)
    with pytest.raises(RecsysError, match="not allowed"):
        promote(MODEL, "1", alias="v2", tracking_uri=store)
