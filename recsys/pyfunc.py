"""The serving bundle as an MLflow model, and how to find it in the registry.

:class:`RecsysPyfuncModel` wraps a bundle (see :mod:`recsys.bundle`) as an ``mlflow.pyfunc`` model:
a DataFrame of member ids in, a DataFrame of ranked picks out. :func:`download_bundle` fetches the
bundle folder of a registered version (``champion`` by default) so the server can load it with
:func:`recsys.bundle.load_bundle` — no training code involved.

:func:`resolve_tracking_uri` lives here, not in ``training``, because serving needs it too: it
turns "no URI given" into the local store and fails fast, with a message, when an MLflow server
cannot be reached (MLflow's own HTTP retries can take minutes).

This module subclasses ``mlflow.pyfunc.PythonModel``, so importing it imports MLflow; nothing else
in :mod:`recsys` imports it at module level.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from recsys.columns import Col
from recsys.errors import InputError, RecsysError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import RegisteredModel
    from mlflow.models import ModelSignature

    from recsys.bundle import Bundle

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
DEFAULT_K = 10
MAX_K = 1000
DEFAULT_MODE = "replenish"
BUNDLE_ARTIFACT = "bundle"  # key of the bundle folder in the pyfunc model's artifacts
RANK, SCORE, FALLBACK, K, MODE = "rank", "score", "fallback", "k", "mode"
OUTPUT_COLUMNS = (Col.MEMBER, RANK, Col.PRODUCT, SCORE, FALLBACK)
HEALTH_TIMEOUT_S = 3.0


# --------------------------------------------------------------------------- tracking URI
def resolve_tracking_uri(uri: str | None = None) -> str:
    """The MLflow tracking URI to use: ``uri`` > env ``MLFLOW_TRACKING_URI`` > ``./mlflow.db``.

    A relative sqlite path is made absolute (so the store does not move with the working
    directory). An ``http(s)`` server is checked first with a short timeout, so an unreachable
    server fails in seconds with :class:`RecsysError` instead of minutes of retries.

    Examples
    --------
    >>> resolve_tracking_uri("sqlite:///mlflow.db")  # doctest: +SKIP
    'sqlite:////home/me/project/mlflow.db'
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not chosen:
        return f"sqlite:///{Path(DEFAULT_DB).resolve()}"
    if chosen.startswith("sqlite:///") and not chosen.startswith("sqlite:////"):
        rel = chosen.removeprefix("sqlite:///")
        if rel and rel != ":memory:" and not Path(rel).is_absolute():
            return f"sqlite:///{Path(rel).resolve()}"
    if chosen.startswith(("http://", "https://")):
        _check_reachable(chosen.rstrip("/"))
    return chosen


def _check_reachable(uri: str) -> None:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=HEALTH_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # it answered (e.g. 401 behind an auth proxy): reachable; MLflow reports the rest
    except OSError as exc:  # URLError, refused, timed out, unknown host
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return  # it answered; certificates are MLflow's business (MLFLOW_TRACKING_INSECURE_TLS)
        raise RecsysError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}); start it, "
            "or unset MLFLOW_TRACKING_URI to use the local store mlflow.db"
        ) from None


def sqlite_artifact_root(tracking_uri: str) -> Path | None:
    """Where experiments of a local sqlite store keep artifacts: ``mlartifacts`` beside the db.

    ``None`` for other stores (a server decides for itself).
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
    if str(db) in ("", ":memory:"):
        return Path(DEFAULT_ARTIFACTS).resolve()
    return db.resolve().parent / DEFAULT_ARTIFACTS


def mlflow_client(tracking_uri: str | None = None) -> MlflowClient:
    """An ``MlflowClient`` on the resolved URI; the registry is the same store unless
    ``MLFLOW_REGISTRY_URI`` says otherwise (MLflow's own rule, which ``log_model`` follows too)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


# --------------------------------------------------------------------------- the pyfunc model
def model_signature() -> ModelSignature:
    """Input: member_id (+ optional per-row k and mode); output: one row per pick; params:
    request-wide defaults for k and mode."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([
        ColSpec("string", Col.MEMBER),
        ColSpec("long", K, required=False),
        ColSpec("string", MODE, required=False),
    ])
    outputs = Schema([
        ColSpec("string", Col.MEMBER),
        ColSpec("long", RANK),
        ColSpec("string", Col.PRODUCT),
        ColSpec("float", SCORE),
        ColSpec("boolean", FALLBACK),
    ])
    params = ParamSchema([ParamSpec(K, "long", DEFAULT_K), ParamSpec(MODE, "string", DEFAULT_MODE)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


class RecsysPyfuncModel(mlflow.pyfunc.PythonModel):
    """Picks for members from a serving bundle, as an MLflow pyfunc model.

    Input: a DataFrame with ``member_id`` and optionally ``k`` (default 10) and ``mode``
    (``replenish`` — the default — or ``discover``) per row. Output: ``member_id, rank,
    product_id, score, fallback``, rows in input order then rank (1 = best). Members the bundle
    does not know get the most popular products (most distinct buyers) with ``fallback=True``.

    Examples
    --------
    >>> import mlflow  # doctest: +SKIP
    >>> model = mlflow.pyfunc.load_model("models:/recsys-default@champion")  # doctest: +SKIP
    >>> model.predict(pd.DataFrame({"member_id": ["m1", "new"], "k": [3, 3]}))  # doctest: +SKIP
    """

    def load_context(self, context: Any) -> None:
        from recsys.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT])
        self._init_fallback()

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> RecsysPyfuncModel:
        """The model answering from an already loaded bundle (tests, in-process serving)."""
        model = cls()
        model.bundle = bundle
        model._init_fallback()
        return model

    def _init_fallback(self) -> None:
        history = self.bundle.model.history
        buyers = np.asarray(history.sum(axis=0)).ravel().astype(np.float64)
        # most buyers first; ties by product index, so the fallback is reproducible
        self._popular = np.lexsort((np.arange(len(buyers)), -buyers))[:MAX_K]
        top = max(float(buyers.max(initial=0.0)), 1.0)
        self._popular_scores = (buyers[self._popular] / top).astype(np.float32)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Ranked picks for each input row; see the class docstring for the columns.

        ``params`` (``k``, ``mode``) set the defaults for rows that leave those columns empty.
        """
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if Col.MEMBER not in df.columns:
            raise InputError(f"input needs a {Col.MEMBER!r} column; got {list(df.columns)}")
        n = len(df)
        missing = df[Col.MEMBER].isna().to_numpy()
        if missing.any():
            examples = np.flatnonzero(missing)[:5].tolist()
            raise InputError(f"{Col.MEMBER!r} is missing in {int(missing.sum())} row(s), e.g. rows {examples}")
        ids = [str(v) for v in df[Col.MEMBER].tolist()]
        params = params or {}
        ks = _column(df, K, params.get(K, DEFAULT_K), n)
        modes = _column(df, MODE, params.get(MODE, DEFAULT_MODE), n)
        try:
            k_arr = np.asarray(ks, dtype=np.int64)
        except (TypeError, ValueError):
            raise InputError(f"{K!r} must be whole numbers between 1 and {MAX_K}") from None
        if n and (k_arr.min() < 1 or k_arr.max() > MAX_K):
            raise InputError(f"{K!r} must be between 1 and {MAX_K}; got {k_arr.min()}..{k_arr.max()}")
        mode_arr = np.asarray([str(m) for m in modes], dtype=object)
        bad = sorted(set(mode_arr.tolist()) - {"replenish", "discover"})
        if bad:
            raise InputError(f"{MODE!r} must be 'replenish' or 'discover'; got {bad}")

        members = self.bundle.members.to_index(ids, missing="ignore")
        known = members >= 0
        rows: list[np.ndarray] = []
        ranks: list[np.ndarray] = []
        products: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        fallback: list[np.ndarray] = []
        # one batched call per distinct (k, mode), never one per member
        for k in np.unique(k_arr):
            for mode in ("replenish", "discover"):
                sel = np.flatnonzero(known & (k_arr == k) & (mode_arr == mode))
                if not len(sel):
                    continue
                idx, sc = self.bundle.model.recommend(members[sel], int(k), mode=mode)
                r, c = np.nonzero(idx >= 0)
                rows.append(sel[r])
                ranks.append(c + 1)
                products.append(idx[r, c])
                scores.append(sc[r, c])
                fallback.append(np.zeros(len(r), dtype=bool))
            sel = np.flatnonzero(~known & (k_arr == k))
            if len(sel):
                top = min(int(k), len(self._popular))
                rows.append(np.repeat(sel, top))
                ranks.append(np.tile(np.arange(1, top + 1), len(sel)))
                products.append(np.tile(self._popular[:top], len(sel)))
                scores.append(np.tile(self._popular_scores[:top], len(sel)))
                fallback.append(np.ones(len(sel) * top, dtype=bool))
        return _frame(ids, rows, ranks, products, scores, fallback, self.bundle)


def _column(df: pd.DataFrame, name: str, default: Any, n: int) -> list[Any]:
    if name not in df.columns:
        return [default] * n
    values = df[name].astype(object).where(df[name].notna(), default)
    return values.tolist()


def _frame(
    ids: list[str],
    rows: list[np.ndarray],
    ranks: list[np.ndarray],
    products: list[np.ndarray],
    scores: list[np.ndarray],
    fallback: list[np.ndarray],
    bundle: Bundle,
) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({
            Col.MEMBER: pd.Series([], dtype=object), RANK: pd.Series([], dtype=np.int64),
            Col.PRODUCT: pd.Series([], dtype=object), SCORE: pd.Series([], dtype=np.float32),
            FALLBACK: pd.Series([], dtype=bool),
        })
    row = np.concatenate(rows)
    rank = np.concatenate(ranks).astype(np.int64)
    order = np.lexsort((rank, row))  # input order, then rank
    row, rank = row[order], rank[order]
    ext = np.asarray(ids, dtype=object)
    return pd.DataFrame({
        Col.MEMBER: ext[row],
        RANK: rank,
        Col.PRODUCT: bundle.products.to_external(np.concatenate(products)[order]),
        SCORE: np.concatenate(scores)[order].astype(np.float32),
        FALLBACK: np.concatenate(fallback)[order],
    })


# --------------------------------------------------------------------------- the registry
def get_registered_model(client: MlflowClient, registered_model: str) -> RegisteredModel:
    """The registered model, or :class:`RecsysError` listing the registered names."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(registered_model)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        raise RecsysError(
            f"no registered model {registered_model!r}; registered: {', '.join(names) or 'none'} "
            "(train and register one first, or pass the right name)"
        ) from None


def model_versions(client: MlflowClient, registered_model: str) -> list[int]:
    """Version numbers of a registered model, ascending."""
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{registered_model}'"))


def resolve_version(client: MlflowClient, registered_model: str, alias: str) -> str:
    """Version number behind ``alias``; a plain number (``"3"``, ``"v3"``) is the version itself.

    Raises :class:`RecsysError` naming what exists when the model, alias or version is unknown.
    """
    rm = get_registered_model(client, registered_model)
    number = alias.removeprefix("v").removeprefix("V")
    if number.isdigit():
        versions = model_versions(client, registered_model)
        if int(number) not in versions:
            raise RecsysError(
                f"{registered_model!r} has no version {alias}; versions: "
                f"{', '.join(map(str, versions)) or 'none'}"
            )
        return str(int(number))
    aliases = {a: str(v) for a, v in (rm.aliases or {}).items()}
    if alias not in aliases:
        known = ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
        raise RecsysError(
            f"{registered_model!r} has no version with alias {alias!r}; aliases: {known} "
            "(set one with `recsys promote`)"
        )
    return aliases[alias]


def download_bundle(
    registered_model: str,
    alias: str = "champion",
    tracking_uri: str | None = None,
    dst: Path | str | None = None,
) -> Path:
    """Download the bundle folder of a registered model version; returns the folder holding
    ``bundle.json``, ready for :func:`recsys.bundle.load_bundle`.

    Only the bundle is fetched (plus the small ``MLmodel`` file that says where it is), not the
    pickled pyfunc wrapper. ``alias`` may also be a plain version number such as ``"3"``.

    Examples
    --------
    >>> from recsys.bundle import load_bundle
    >>> bundle = load_bundle(download_bundle("recsys-default", "champion"))  # doctest: +SKIP

    Without ``dst`` the bundle goes to a new temporary folder that the caller must remove (the
    server uses :mod:`serving.downloads`, which does).
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    version = resolve_version(client, registered_model, alias)
    root = client.get_model_version_download_uri(registered_model, version).rstrip("/")
    out = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="recsys-bundle-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        local = _download_into(client, registered_model, version, root, out, uri)
    except BaseException:
        if dst is None:  # our own temporary folder: nothing left behind by a failed download
            shutil.rmtree(out, ignore_errors=True)
        raise
    return local


def _bundle_path(registered_model: str, version: str, root: str, uri: str) -> str:
    """Where the bundle folder is inside a registered version's artifacts (read from its MLmodel)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    from recsys.bundle import BundleError

    with tempfile.TemporaryDirectory(prefix="recsys-mlmodel-") as tmp:
        mlmodel = download_artifacts(artifact_uri=f"{root}/MLmodel", dst_path=tmp, tracking_uri=uri)
        flavor = Model.load(mlmodel).flavors.get("python_function", {})
    rel = flavor.get("artifacts", {}).get(BUNDLE_ARTIFACT, {}).get("path")
    if not rel:
        raise BundleError(
            f"{registered_model} v{version} is not a recsys model (no {BUNDLE_ARTIFACT!r} "
            "artifact); register it with training.tracking.log_bundle_model"
        )
    return str(rel)


def registered_bundle_meta(client: MlflowClient, registered_model: str, version: str, uri: str) -> dict[str, Any]:
    """``bundle.json`` of a registered version: only that file (and the small ``MLmodel``) is
    downloaded, to a temporary folder removed before returning."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from recsys.bundle import BundleError

    root = client.get_model_version_download_uri(registered_model, version).rstrip("/")
    try:
        rel = _bundle_path(registered_model, version, root, uri)
        with tempfile.TemporaryDirectory(prefix="recsys-bundle-meta-") as tmp:
            path = download_artifacts(artifact_uri=f"{root}/{rel}/bundle.json", dst_path=tmp, tracking_uri=uri)
            meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except MlflowException as exc:
        raise RecsysError(f"cannot read bundle.json of {registered_model} v{version} from {uri} ({exc.message})") from None
    except ValueError as exc:
        raise BundleError(f"{registered_model} v{version}: bundle.json is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{registered_model} v{version}: bundle.json is not a JSON object")
    return meta


def _download_into(client: MlflowClient, registered_model: str, version: str, root: str, out: Path,
                   uri: str) -> Path:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from recsys.bundle import BundleError

    try:
        rel = _bundle_path(registered_model, version, root, uri)
        local = Path(download_artifacts(artifact_uri=f"{root}/{rel}", dst_path=str(out), tracking_uri=uri))
    except MlflowException as exc:
        raise RecsysError(
            f"cannot download {registered_model} v{version} from {uri} ({exc.message})"
        ) from None
    if not (local / "bundle.json").exists():
        raise BundleError(f"{registered_model} v{version}: downloaded {local} has no bundle.json")
    return local


def load_champion_bundle(
    registered_model: str,
    alias: str = "champion",
    tracking_uri: str | None = None,
    dst: Path | str | None = None,
) -> Path:
    """The local bundle folder of the version ``alias`` points at (the champion by default)."""
    return download_bundle(registered_model, alias, tracking_uri, dst)
