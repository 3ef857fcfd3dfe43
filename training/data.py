"""Load what a model trains on: canonical transactions cut at a date, plus the tags of a
features snapshot computed as of the same date."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np

from recsys.columns import Col
from recsys.errors import InputError
from recsys.idmap import IdMap
from recsys.interactions import load_interactions
from recsys.models.base import Tag, TrainData
from training.evaluate import Split

MEMBER_TAGS = ("value_segment", "lifecycle", "price_sensitivity", "age_group", "region")
PRODUCT_TAGS = ("category", "price_band", "brand")


@dataclass(frozen=True)
class DataPaths:
    canonical: Path
    features: Path

    @property
    def transactions(self) -> Path:
        return self.canonical / "transactions.parquet"

    def check(self) -> None:
        if not self.transactions.exists():
            raise InputError(f"{self.transactions} not found; run `recsys data ingest` first")
        if not (self.features / "manifest.json").exists():
            raise InputError(
                f"no features snapshot in {self.features}; run `recsys features build --as-of ...` first"
            )


def _tags(table: Path, key: str, ids: IdMap, names: tuple[str, ...]) -> tuple[dict[str, Tag], dict[str, np.ndarray]]:
    con = duckdb.connect()
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{table}')").fetchall()}
    wanted = [n for n in names if n in cols]
    extra = [n for n in ("price", "median_unit_price") if n in cols]
    sel = ", ".join([key, *wanted, *extra])
    data = con.execute(f"SELECT {sel} FROM read_parquet('{table}')").fetchnumpy()
    idx = ids.to_index(data[key].astype(str), missing="ignore")
    keep = idx >= 0
    tags: dict[str, Tag] = {}
    for n in wanted:
        values = np.full(len(ids), None, dtype=object)
        values[idx[keep]] = np.asarray(data[n], dtype=object)[keep]
        tags[n] = Tag.from_values(values)
    numeric: dict[str, np.ndarray] = {}
    for n in extra:
        arr = np.full(len(ids), np.nan, dtype=np.float32)
        arr[idx[keep]] = np.asarray(data[n], dtype=np.float32)[keep]
        numeric[n] = arr
    return tags, numeric


def catalogue(paths: DataPaths) -> IdMap:
    """Every product of the features snapshot (sold or not), so never-sold products get an index."""
    con = duckdb.connect()
    ids = con.execute(
        f"SELECT {Col.PRODUCT} FROM read_parquet('{paths.features / 'products.parquet'}')"
    ).fetchnumpy()[Col.PRODUCT]
    return IdMap.from_values(ids.astype(str))


def load_split(paths: DataPaths, cutoff: date, end: date | None = None) -> tuple[TrainData, Split]:
    """Train data before ``cutoff`` and the test truth in ``[cutoff, end)``."""
    paths.check()
    as_of = json.loads((paths.features / "manifest.json").read_text()).get("as_of")
    if as_of != cutoff.isoformat():
        raise InputError(
            f"the features snapshot in {paths.features} is as of {as_of}, not the cutoff {cutoff}; "
            f"build it with `recsys features build --as-of {cutoff}` (tags must not see the test window)"
        )
    products = catalogue(paths)
    train = load_interactions(paths.transactions, cutoff, products=products)
    test_end = end or date(9999, 1, 1)
    test = load_interactions(paths.transactions, test_end, start=cutoff, members=train.members, products=products)
    member_tags, _ = _tags(paths.features / "members.parquet", Col.MEMBER, train.members, MEMBER_TAGS)
    product_tags, numeric = _tags(paths.features / "products.parquet", Col.PRODUCT, products, PRODUCT_TAGS)
    price = numeric.get("price")
    data = TrainData(train, member_tags, product_tags, price)
    return data, Split(train, test, cutoff, test_end)


def load_train(paths: DataPaths, as_of: date) -> TrainData:
    """Everything before ``as_of``: what a production model is trained on."""
    data, _ = load_split(paths, as_of, as_of)
    return data
