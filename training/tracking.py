"""MLflow tracking for training runs, and the registry gate that picks the champion.

* :class:`Tracker` wraps one MLflow run: flattened params, metrics with MLflow-safe names
  (``recall@10`` -> ``recall_at_10``, see :func:`metric_key`), per-iteration curves, artifacts,
  and the git commit of the code.
* :func:`log_bundle_model` logs a serving bundle as an ``mlflow.pyfunc`` model
  (:class:`recsys.pyfunc.RecsysPyfuncModel`) and registers it.
* :func:`gate_champion` moves the ``champion`` alias to a new version only when it beats the
  current champion on a metric; otherwise the new version becomes the ``challenger``.
  :func:`promote` is the by-hand override.

The store defaults to ``./mlflow.db`` (sqlite) with artifacts in ``./mlartifacts``; set
``MLFLOW_TRACKING_URI`` or pass ``tracking_uri`` to use a server (checked for reachability first).

Examples
--------
>>> with Tracker("tafeng", run_name="als-64") as run:  # doctest: +SKIP
...     run.log_params({"model": {"name": "als", "factors": 64}})
...     run.log_metrics({"recall@10": 0.12})
...     version = log_bundle_model(run, Path("bundle"), "recsys-default")
>>> gate_champion("recsys-default", version.version, "recall@10", 0.12)  # doctest: +SKIP
'champion'
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import re
import subprocess
import time
from collections.abc import Mapping
from datetime import UTC, date, datetime
from enum import Enum
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from recsys.columns import Col
from recsys.errors import RecsysError
from recsys.pyfunc import (
    BUNDLE_ARTIFACT,
    download_bundle,
    get_registered_model,
    load_champion_bundle,
    mlflow_client,
    model_versions,
    resolve_tracking_uri,
    resolve_version,
    sqlite_artifact_root,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

__all__ = [
    "Tracker",
    "download_bundle",
    "flatten_params",
    "gate_champion",
    "load_champion_bundle",
    "log_bundle_model",
    "metric_key",
    "promote",
    "resolve_tracking_uri",
]

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_KEY = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
# Runtime packages a bundle needs; pinned from this environment so MLflow does not have to infer
# them (inference loads the model in a subprocess — slow for a large bundle).
RUNTIME_PACKAGES = ("mlflow", "numpy", "scipy", "pandas", "pyarrow", "duckdb", "implicit",
                    "threadpoolctl", "pydantic")

_BAD_KEY_CHARS = re.compile(r"[^\w./\- ]")


# --------------------------------------------------------------------------- names and params
def metric_key(name: str) -> str:
    """The MLflow-safe spelling of a metric (or param) name; deterministic and idempotent.

    MLflow names may only hold letters, digits, ``_ - . / space`` (and ``:`` off Windows) and
    must not look like a path that normalises to something else. ``@`` becomes ``_at_``, any
    other disallowed character ``_``.

    Examples
    --------
    >>> metric_key("recall@10")
    'recall_at_10'
    >>> metric_key("audience_new_lift_random@1000")
    'audience_new_lift_random_at_1000'
    >>> metric_key("loss (train)")
    'loss _train_'
    """
    key = _BAD_KEY_CHARS.sub("_", name.replace("@", "_at_"))
    norm = posixpath.normpath(key) if key else key
    if norm != key or key in (".", "") or key.startswith(("..", "/")):
        key = key.replace("/", "_")
        if key in ("", ".", "..") or key.startswith(".."):
            key = "_" + key
    return key[:MAX_KEY]


def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> flat ``{"a.b.c": "value"}`` strings, as MLflow params want them.

    Lists of plain values are joined with ``,``; lists holding mappings are indexed (``a.0.b``);
    pydantic models are dumped first; values longer than MLflow's 6000-character limit are cut
    (ending in ``...``). Keys are made MLflow-safe with :func:`metric_key`.

    Examples
    --------
    >>> flatten_params({"model": {"name": "als", "factors": 64}, "ks": [10, 20], "seed": None})
    {'model.name': 'als', 'model.factors': '64', 'ks': '10,20', 'seed': 'None'}
    """
    out: dict[str, str] = {}
    for key, value in d.items():
        full = f"{prefix}{key}"
        if hasattr(value, "model_dump"):  # pydantic model
            value = value.model_dump(mode="json")
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{full}."))
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
            if any(isinstance(v, Mapping) or hasattr(v, "model_dump") for v in items):
                out.update(flatten_params({str(i): v for i, v in enumerate(items)}, f"{full}."))
            else:
                out[metric_key(full)] = _truncate(",".join(_scalar(v) for v in items))
        else:
            out[metric_key(full)] = _truncate(_scalar(value))
    return out


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------- git
def git_state(path: Path | str | None = None) -> dict[str, str]:
    """``{"git.commit": sha, "git.dirty": "true"|"false"}`` for the repo holding ``path``
    (default: this code); empty outside a repo or without git — never raises."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return {}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    commit = sha.stdout.strip()
    out = {"git.commit": commit, "mlflow.source.git.commit": commit}
    if status.returncode == 0:
        out["git.dirty"] = "true" if status.stdout.strip() else "false"
    return out


# --------------------------------------------------------------------------- the tracker
class Tracker:
    """One MLflow run, as a context manager.

    Entering resolves the store (failing fast on an unreachable server), creates the experiment
    when needed (artifacts beside a sqlite store, in ``mlartifacts``), starts the run and tags it
    with the git commit. Leaving ends it ``FINISHED``, or ``FAILED`` when an exception escapes
    (``KILLED`` on Ctrl-C).

    Parameters
    ----------
    experiment : experiment name, created when missing
    run_name : shown in the MLflow UI; MLflow makes one up when ``None``
    tracking_uri : see :func:`resolve_tracking_uri`
    nested : start the run under the active one (e.g. trials of a search)

    Examples
    --------
    >>> with Tracker("tafeng", "popular") as run:  # doctest: +SKIP
    ...     run.log_metrics({"recall@10": 0.05})
    """

    def __init__(
        self,
        experiment: str,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        *,
        nested: bool = False,
    ):
        self.experiment = experiment
        self.run_name = run_name
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.nested = nested
        self.metric_names: dict[str, str] = {}  # original name -> name logged in MLflow
        self._by_key: dict[str, str] = {}  # name logged in MLflow -> original name
        self._run_id: str | None = None
        self._client: MlflowClient | None = None
        self._previous_uri: str | None = None

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Tracker:
        import mlflow

        # the fluent API (start_run, pyfunc.log_model) reads the global URI; put it back on exit
        self._previous_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            self._client = mlflow_client(self.tracking_uri)
            experiment_id = self._experiment_id()
            run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name, nested=self.nested)
        except BaseException:
            mlflow.set_tracking_uri(self._previous_uri)
            raise
        self._run_id = run.info.run_id
        tags = git_state()
        if tags:
            self.set_tags(tags)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import mlflow

        renamed = {k: v for k, v in self.metric_names.items() if k != v}
        if renamed and self._run_id is not None:
            try:  # lets a reader of the MLflow UI find "recall@10" under "recall_at_10"
                self.log_dict(renamed, "metric_names.json")
            except Exception as log_exc:  # never mask the run's own outcome
                log.warning("could not log metric_names.json: %s", log_exc)
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self._run_id:
            mlflow.end_run(status=status)
        elif self._run_id is not None:
            self.client.set_terminated(self._run_id, status=status)
        mlflow.set_tracking_uri(self._previous_uri)  # None unsets it (and MLFLOW_TRACKING_URI)

    def _experiment_id(self) -> str:
        existing = self.client.get_experiment_by_name(self.experiment)
        if existing is not None:
            if existing.lifecycle_stage == "deleted":
                raise RecsysError(
                    f"experiment {self.experiment!r} is deleted in {self.tracking_uri}; restore it "
                    "(mlflow experiments restore) or choose another name"
                )
            return existing.experiment_id
        root = sqlite_artifact_root(self.tracking_uri)
        folder = re.sub(r"[^\w.\-]", "_", self.experiment).strip(".") or "experiment"
        location = (root / folder).as_uri() if root is not None else None
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # created meanwhile by a concurrent run
            again = self.client.get_experiment_by_name(self.experiment)
            if again is None:
                raise
            return again.experiment_id

    @property
    def run_id(self) -> str:
        """The MLflow run id, once the run has started (it stays readable after the block)."""
        if self._run_id is None:
            raise RuntimeError("Tracker has no run yet; use it as `with Tracker(...) as run:`")
        return self._run_id

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    # ------------------------------------------------------------ logging
    def log_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Log a (nested) config as flattened params; returns what was logged."""
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, v) for k, v in flat.items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + PARAMS_PER_BATCH])
        return flat

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
        """Log metrics under MLflow-safe names (:func:`metric_key`), skipping None / NaN / inf.

        Returns the logged ``{mlflow_name: value}``. Two names that would collide (``recall@10``
        and ``recall_at_10`` in one run) raise ``ValueError`` rather than overwrite each other.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        logged: dict[str, float] = {}
        for name, value in metrics.items():
            key = self._key(name)
            f = _finite(value)
            if f is None:
                log.debug("metric %s=%r not logged (not a finite number)", name, value)
                continue
            logged[key] = f
        items = [Metric(k, v, now, step or 0) for k, v in logged.items()]
        for start in range(0, len(items), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start : start + METRICS_PER_BATCH])
        return logged

    def log_iteration(self, name: str, step: int, value: float) -> None:
        """One point of a per-iteration curve (training loss, seconds); NaN is skipped."""
        f = _finite(value)
        if f is not None:
            self.client.log_metric(self.run_id, self._key(name), f, step=int(step))

    def _key(self, name: str) -> str:
        key = self.metric_names.get(name)
        if key is not None:
            return key
        key = metric_key(name)
        other = self._by_key.get(key)
        if other is not None:
            raise ValueError(f"metric names {other!r} and {name!r} both become {key!r} in MLflow; rename one")
        self.metric_names[name], self._by_key[key] = key, name
        return key

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """A dict / list as a JSON (``.json``) or YAML (``.yaml``) artifact."""
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """A matplotlib (or plotly) figure as an image artifact."""
        self.client.log_figure(self.run_id, fig, artifact_file)

    def log_file(self, path: Path | str, artifact_path: str | None = None) -> None:
        """A local file — or a whole folder — as run artifacts."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        else:
            raise RecsysError(f"cannot log {path}: no such file or folder")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Run tags (values are stringified)."""
        from mlflow.entities import RunTag

        items = [RunTag(str(k), _truncate(_scalar(v))) for k, v in tags.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items)


# --------------------------------------------------------------------------- the registry
def _pip_requirements() -> list[str]:
    reqs = []
    for name in RUNTIME_PACKAGES:
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


class _DropMessages(logging.Filter):
    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def log_bundle_model(
    tracker: Tracker,
    bundle_dir: Path | str,
    registered_model: str,
    *,
    input_example: bool = True,
) -> ModelVersion:
    """Log the bundle folder as an ``mlflow.pyfunc`` model named ``model`` in the tracker's run
    and register it under ``registered_model``; returns the new model version.

    The bundle is checked with :func:`recsys.bundle.load_bundle` first, so a broken bundle is
    never registered. The model answers ``member_id`` (+ optional ``k``, ``mode``) with ranked
    picks; see :class:`recsys.pyfunc.RecsysPyfuncModel`. With ``input_example`` (one known
    member) MLflow also loads the logged model once and answers the example — an end-to-end check
    that costs one more bundle load. Serving needs the ``recsys`` package installed (the model
    pickles the class by reference, not the code).

    Examples
    --------
    >>> with Tracker("tafeng", "als") as run:  # doctest: +SKIP
    ...     mv = log_bundle_model(run, Path("out/bundle"), "recsys-default")
    >>> mv.version  # doctest: +SKIP
    '1'
    """
    import mlflow
    import pandas as pd

    from recsys.bundle import load_bundle
    from recsys.pyfunc import RecsysPyfuncModel, model_signature

    bundle_dir = Path(bundle_dir).resolve()
    bundle = load_bundle(bundle_dir)  # raises BundleError with the reason
    active = mlflow.active_run()
    if active is None or active.info.run_id != tracker.run_id:
        raise RuntimeError("log_bundle_model needs the tracker's run active: call it inside `with tracker:`")
    example = None
    if input_example and len(bundle.members):
        example = pd.DataFrame({Col.MEMBER: [str(bundle.members.external_ids[0])], "k": [3]})
    # the pickled wrapper is only a class reference; MLflow's warning about pickles is noise here
    quiet = _DropMessages("Passing a Python object as `python_model`")
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    pyfunc_log.addFilter(quiet)
    try:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=RecsysPyfuncModel(),
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
            signature=model_signature(),
            input_example=example,
            pip_requirements=_pip_requirements(),
            registered_model_name=registered_model,
            metadata={"bundle_format_version": bundle.meta.get("format_version"),
                      "recommender": bundle.model.name},
        )
    finally:
        pyfunc_log.removeFilter(quiet)
    version = str(info.registered_model_version)
    client = tracker.client
    for key, value in {
        "recommender": bundle.model.name,
        "bundle.format_version": bundle.meta.get("format_version"),
        "n_members": len(bundle.members),
        "n_products": len(bundle.products),
    }.items():
        client.set_model_version_tag(registered_model, version, key, str(value))
    return client.get_model_version(registered_model, version)


def _beats(new: float, old: float, higher_is_better: bool) -> bool:
    """Strictly better; a tie keeps the incumbent."""
    return new > old if higher_is_better else new < old


def gate_champion(
    registered_model: str,
    version: str | int,
    metric: str,
    value: float,
    higher_is_better: bool = True,
    tracking_uri: str | None = None,
) -> str:
    """Make ``version`` the ``champion`` if it beats the current one on ``metric``, else the
    ``challenger``; returns ``"champion"`` or ``"challenger"``.

    The champion's value is read from the metrics of the run that logged it (under the
    MLflow-safe name, :func:`metric_key`). There is no contest when there is no champion yet.
    A tie, a non-finite ``value`` or a champion run without the metric keep the champion (the
    last is logged as a warning — promote by hand when the metric really changed). The decision
    and its reason are tagged on the new version (``gate.*``).

    Examples
    --------
    >>> gate_champion("recsys-default", 3, "recall@10", 0.131)  # doctest: +SKIP
    'champion'
    """
    client = mlflow_client(tracking_uri)
    version = resolve_version(client, registered_model, str(version))
    key = metric_key(metric)
    new = _finite(value)
    aliases = {a: str(v) for a, v in (client.get_registered_model(registered_model).aliases or {}).items()}
    current = aliases.get(CHAMPION)
    tags: dict[str, str] = {"gate.metric": key, "gate.value": str(new if new is not None else value),
                            "gate.higher_is_better": str(higher_is_better).lower()}
    if current is None:
        decision, reason = (CHAMPION, "no champion yet") if new is not None else (
            CHALLENGER, f"{key} is not a finite number")
    elif current == version:
        decision, reason = CHAMPION, "already the champion"
    else:
        champ = client.get_model_version(registered_model, current)
        old = client.get_run(champ.run_id).data.metrics.get(key) if champ.run_id else None
        tags.update({"gate.champion_version": current, "gate.champion_value": repr(old)})
        if new is None:
            decision, reason = CHALLENGER, f"{key} is not a finite number"
        elif old is None:
            decision, reason = CHALLENGER, f"champion v{current} has no metric {key}"
            log.warning("%s: champion v%s has no metric %s; v%s stays challenger (promote by hand)",
                        registered_model, current, key, version)
        elif _beats(new, old, higher_is_better):
            decision, reason = CHAMPION, f"{key} {new:.6g} beats v{current}'s {old:.6g}"
        else:
            decision, reason = CHALLENGER, f"{key} {new:.6g} does not beat v{current}'s {old:.6g}"
    client.set_registered_model_alias(registered_model, decision, version)
    if decision == CHAMPION and aliases.get(CHALLENGER) == version:
        client.delete_registered_model_alias(registered_model, CHALLENGER)
    tags.update({"gate.decision": decision, "gate.reason": reason,
                 "gate.at": datetime.now(UTC).isoformat(timespec="seconds")})
    for k, v in tags.items():
        client.set_model_version_tag(registered_model, version, k, v)
    return decision


def promote(
    registered_model: str,
    version: str | int | None = None,
    alias: str = CHAMPION,
    tracking_uri: str | None = None,
) -> str:
    """Point ``alias`` at ``version`` by hand (``None``: the latest version); returns the version.

    Raises :class:`RecsysError` naming the registered models or versions when the one asked for
    does not exist.

    Examples
    --------
    >>> promote("recsys-default", 2)  # doctest: +SKIP
    '2'
    """
    client = mlflow_client(tracking_uri)
    rm = get_registered_model(client, registered_model)
    if version is None:
        versions = model_versions(client, registered_model)
        if not versions:
            raise RecsysError(f"{registered_model!r} has no versions yet; train and register one first")
        chosen = str(versions[-1])
    else:
        chosen = str(version)
        if not chosen.removeprefix("v").removeprefix("V").isdigit():
            raise RecsysError(f"version {chosen!r} is not a version number; e.g. 3")
        chosen = resolve_version(client, registered_model, chosen)
    if not alias or not re.fullmatch(r"[\w\-]+", alias) or re.fullmatch(r"[vV]\d+", alias):
        raise RecsysError(f"alias {alias!r} is not allowed; use letters, digits, '_' or '-', e.g. champion")
    aliases = {a: str(v) for a, v in (rm.aliases or {}).items()}
    client.set_registered_model_alias(registered_model, alias, chosen)
    if alias == CHAMPION and aliases.get(CHALLENGER) == chosen:
        client.delete_registered_model_alias(registered_model, CHALLENGER)
    client.set_model_version_tag(
        registered_model, chosen, f"promoted.{alias}",
        datetime.now(UTC).isoformat(timespec="seconds") + f" by {os.environ.get('USER', 'unknown')}",
    )
    return chosen
