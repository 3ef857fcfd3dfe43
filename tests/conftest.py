"""Shared fixtures. Serving: tiny bundles with known answers, API keys per role, app factories.

The serving data (7 products, 6 members) is small enough to work every expected answer out by
hand; the comments in tests/test_serving_*.py show the arithmetic.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from recsys.bundle import Bundle, save_bundle
from recsys.idmap import IdMap
from recsys.interactions import Interactions
from recsys.models import Tag, TrainData, get_model
from recsys.models.base import Capability
from recsys.models.baselines import TopFrequency
from recsys.tags import TagDef, TagRegistry, values, with_seen_values

# (member, product, days before as_of). Every member buys at most one product a day, so
# "activity" is the same whether it counts shopping days or purchase occasions.
SERVING_OCCASIONS = [
    (0, 0, 1), (0, 0, 8), (0, 0, 15), (0, 1, 3),
    (1, 1, 2), (1, 1, 9), (1, 2, 4),
    (2, 0, 5), (2, 3, 6),
    (3, 2, 1), (3, 2, 7), (3, 4, 2),
    (4, 0, 3), (4, 1, 4), (4, 2, 10),
    (5, 3, 4), (5, 0, 12), (5, 5, 2),
]
S_MEMBERS = [f"m{i}" for i in range(6)]
S_PRODUCTS = [f"p{i}" for i in range(7)]
S_CATEGORIES = ["dairy", "dairy", "bakery", "bakery", "snacks", "snacks", "snacks"]
S_NAMES = ["鲜牛奶", "酸奶", "吐司", "蛋糕", "薯片", "旧款饼干", "新品坚果"]
S_PRICES = [12.0, 6.0, 9.0, 30.0, 8.0, 5.0, 25.0]
S_BANDS = ["high", "low", "mid", "high", "mid", "low", "high"]
S_BRANDS = ["光明", "光明", "桃李", "好利来", "乐事", "乐事", "三只松鼠"]
S_ACTIVE = [True, True, True, True, True, False, True]  # p5 is delisted
S_SEGMENTS = ["high", "mid", "low", "mid", "high", None]
S_LIFECYCLE = ["active", "active", "sleeping", "new", "active", "lost"]
S_REGIONS = ["上海", "北京", "上海", "广州", "北京", "上海"]
S_CHANNELS = [["app", "store"], ["app"], ["store"], [], ["mini_program", "store"], ["store"]]
S_STORES = ["S01", "S02", "S01", "S02", "S02", "S01"]
TRAIN_AS_OF = date(2001, 2, 1)

_BUILTIN = TagRegistry.builtin()
# The bundles' tag registry, as a features build would have written it: a value segment of its own
# (three values), the built-in lifecycle, region, channel (multi-valued) and home store.
S_TAGS = TagRegistry((
    TagDef(name="value_segment", entity="member", zh="价值分层", en="Value segment", expr="'x'",
           values=values(("high", "高价值", "high"), ("mid", "中价值", "mid"), ("low", "低价值", "low"))),
    _BUILTIN.get("lifecycle"),
    with_seen_values(_BUILTIN.get("region"), S_REGIONS),
    with_seen_values(_BUILTIN.get("channel"), {c for cs in S_CHANNELS for c in cs}),
    with_seen_values(_BUILTIN.get("store"), S_STORES),
    with_seen_values(_BUILTIN.get("price_band"), S_BANDS),
))

KEYS = {"app": "app-secret-1", "merchandiser": "merch-secret-1", "admin": "admin-secret-1"}
# staff keys of two scopes on the same bundle: store S01 (m0, m2, m5) and region 北京 (m1, m4)
STAFF_KEYS = {"staff-s01": ("staff-s01-secret", {"store": ["S01"]}),
              "staff-beijing": ("staff-bj-secret", {"region": ["北京"]})}


class DatedTopFrequency(TopFrequency):
    """TopFrequency that also declares the capabilities serving uses beyond the contract:
    purchase ages (days before as_of of each member's last purchase of each product), purchase
    counts and calibrated purchase probabilities."""

    name = "serving_test_dated_top_frequency"
    capabilities = frozenset({Capability.PURCHASE_AGES, Capability.PURCHASE_COUNTS, Capability.PROBABILITIES})

    def _fit(self, data: TrainData) -> None:
        super()._fit(data)
        self.last_age = data.interactions.last_age()

    def purchase_ages(self) -> sp.csr_matrix:
        return self.last_age

    def purchase_counts(self) -> sp.csr_matrix:
        """Purchase days per member and product ("bought it N times")."""
        return self.freq

    def purchase_probability(self, scores: np.ndarray) -> np.ndarray:
        s = np.maximum(np.asarray(scores, dtype=np.float64), 0.0)
        return s / (1.0 + s)

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "last_age": self.last_age}

    def _set_state(self, s: dict[str, Any]) -> None:
        self.last_age = s.pop("last_age")
        super()._set_state(s)


def serving_train_data() -> TrainData:
    m, p, age = (np.array(col, dtype=np.int32) for col in zip(*SERVING_OCCASIONS, strict=True))
    x = Interactions(
        members=IdMap(S_MEMBERS), products=IdMap(S_PRODUCTS), member=m, product=p, age_days=age,
        quantity=np.ones(len(m), np.float32), amount=np.full(len(m), 9.9, np.float32), as_of=TRAIN_AS_OF,
    )
    return TrainData(
        x,
        member_tags={"value_segment": Tag.from_values(S_SEGMENTS)},
        product_tags={"category": Tag.from_values(S_CATEGORIES), "price_band": Tag.from_values(S_BANDS)},
        product_price=np.array(S_PRICES, np.float32),
    )


def serving_bundle(model_name: str, as_of: date = TRAIN_AS_OF, **params: Any) -> Bundle:
    defaults: dict[str, dict[str, Any]] = {
        "als": {"factors": 4, "iterations": 10, "num_threads": 1, "seed": 7, "weighting": "count",
                "regularization": 0.1},
    }
    data = serving_train_data()
    model = get_model(model_name)({**defaults.get(model_name, {}), **params}).fit(data)
    return Bundle(
        model=model,
        members=data.interactions.members,
        products=data.interactions.products,
        member_table=pa.table({
            "member_id": S_MEMBERS, "value_segment": S_SEGMENTS, "lifecycle": S_LIFECYCLE, "region": S_REGIONS,
            "channel": pa.array(S_CHANNELS, pa.list_(pa.string())), "store": S_STORES,
        }),
        product_table=pa.table({
            "product_id": S_PRODUCTS, "category": S_CATEGORIES, "name": S_NAMES, "price": S_PRICES,
            "price_band": S_BANDS, "brand": S_BRANDS, "active": S_ACTIVE,
        }),
        meta={"run_id": f"run-{model_name}", "metrics": {"recall@10": 0.25}, "as_of": as_of.isoformat()},
        tags=S_TAGS,
    )


@pytest.fixture(scope="session")
def serving_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved bundles: ``top_frequency`` (exact answers), ``als`` (vectors), ``dated`` (capabilities,
    as_of = today so purchase ages are days before today)."""
    root = tmp_path_factory.mktemp("serving-bundles")
    today = datetime.now(UTC).date()
    return {
        "top_frequency": save_bundle(root / "top_frequency", serving_bundle("top_frequency")),
        "als": save_bundle(root / "als", serving_bundle("als")),
        "dated": save_bundle(root / "dated", serving_bundle(DatedTopFrequency.name, as_of=today)),
    }


@pytest.fixture
def serving_settings(tmp_path: Path, serving_bundles: dict[str, Path]) -> Callable[..., Any]:
    """``make(bundle="top_frequency", **overrides)`` -> ServingSettings with per-test files."""
    from serving.keys import hash_key
    from serving.settings import ApiKeySpec, ServingSettings

    def make(bundle: str | Path | None = "top_frequency", **overrides: Any) -> ServingSettings:
        if bundle is None:  # a registered model: pass registered_model=...
            path = None
        else:
            path = serving_bundles[bundle] if isinstance(bundle, str) and bundle in serving_bundles else Path(bundle)
        values: dict[str, Any] = {
            "bundle": path,
            "api_keys": [ApiKeySpec(id=f"{role}-key", role=role, sha256=hash_key(secret))  # type: ignore[arg-type]
                         for role, secret in KEYS.items()]
            + [ApiKeySpec(id=key_id, role="staff", sha256=hash_key(secret), scope=scope)
               for key_id, (secret, scope) in STAFF_KEYS.items()],
            "events_dir": tmp_path / "events",
            # campaigns and the audit trail: a database per test
            "campaign_db": f"sqlite:///{tmp_path / 'campaigns.db'}",
            "load_in_background": False,
            "events_poll_seconds": 0,
            "max_batch": 5,
        }
        values.update(overrides)
        return ServingSettings(**values)

    return make


@pytest.fixture
def serving_client(serving_settings: Callable[..., Any]) -> Callable[..., Any]:
    """``with make_client(bundle, **overrides) as client:`` a started TestClient."""
    from fastapi.testclient import TestClient

    from serving.app import create_app

    def make(bundle: str | Path = "top_frequency", **overrides: Any) -> TestClient:
        return TestClient(create_app(serving_settings(bundle, **overrides)))

    return make


def audit_trail(settings_or_url: Any) -> list[dict[str, Any]]:
    """Every audit entry of a server's database (its settings, or the URL), oldest first."""
    from serving.audit import AuditLog
    from serving.db import Database

    url = settings_or_url if isinstance(settings_or_url, str) else settings_or_url.campaign_db
    db = Database(url)
    try:
        return list(reversed(list(AuditLog(db).newest_first())))
    finally:
        db.dispose()


def auth(role: str) -> dict[str, str]:
    """The key header of a role's key, or of a staff key by its id (``auth("staff-s01")``)."""
    return {"X-API-Key": KEYS[role] if role in KEYS else STAFF_KEYS[role][0]}


@pytest.fixture
def client(serving_client: Callable[..., Any]) -> Iterator[Any]:
    """A started TestClient on the top_frequency bundle."""
    with serving_client() as c:
        yield c


def history_matrix() -> sp.csr_matrix:
    return serving_train_data().interactions.matrix("binary")


# ------------------------------------------------------------------ an MLflow store per test
@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow sqlite store; creating one takes seconds, copying it does not."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path: Path, template_db: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite store in tmp_path (the working directory); returns its URI."""
    import shutil

    shutil.copy(template_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# ------------------------------------------------------------------ a real server on 127.0.0.1
@contextmanager
def uvicorn_server(app: Any, ready_path: str = "/health/ready", timeout_s: float = 30.0) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free port; yields its base URL once
    ``ready_path`` answers 200, and stops the server on exit."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}{ready_path}", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "the server never became ready"
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()


# --------------------------------------------------------------------------- Spark
os.environ.setdefault("RECSYS_SPARK_MASTER", "local[2]")  # a model fitted without the fixture


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One local[2] SparkSession for the whole test session; Spark tests use small data."""
    pytest.importorskip("pyspark", reason="Spark tests need the spark extra: pip install -e '.[spark]'")
    from recsys.spark.session import SparkSettings, get_spark

    # its warehouse folder in the test's temporary folder, not spark-warehouse/ in the working directory
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = get_spark(SparkSettings(master="local[2]", conf={"spark.driver.memory": "2g",
                                                              "spark.sql.warehouse.dir": str(warehouse)}))
    session.conf.set("spark.sql.shuffle.partitions", "2")  # small data: few tasks
    yield session
    session.stop()


# --------------------------------------------------------------------------- campaign databases
@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """One real PostgreSQL server for the session (tests/postgres_server.py); its URL."""
    from postgres_server import postgres_server

    with postgres_server() as url:
        yield url


_DB_COUNTER = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def campaign_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty campaign database: a SQLite file, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'campaigns.db'}"
        return
    import sqlalchemy as sa

    server = request.getfixturevalue("postgres_server_url")
    name = f"campaigns_{next(_DB_COUNTER)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
