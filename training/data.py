"""Load what a model trains on: canonical transactions cut at a date, plus the tags of a
features snapshot computed as of the same date."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

from recsys.columns import Col
from recsys.errors import InputError
from recsys.idmap import IdMap
from recsys.interactions import load_interactions
from recsys.models.base import Tag, TrainData
from recsys.tags import FALSE, TRUE, TagRegistry, registry_of_table
from training.evaluate import Split

# product attributes models read beside the product tags: from the catalogue, not computed
PRODUCT_ATTRIBUTES = (Col.CATEGORY, Col.BRAND)


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
    sel = ", ".join([key, *(f'"{n}"' for n in wanted), *extra])
    data = con.execute(f"SELECT {sel} FROM read_parquet('{table}')").fetchnumpy()
    idx = ids.to_index(data[key].astype(str), missing="ignore")
    keep = idx >= 0
    tags: dict[str, Tag] = {}
    for n in wanted:
        values = np.full(len(ids), None, dtype=object)
        column = np.asarray(data[n], dtype=object)
        if data[n].dtype == bool:  # a flag tag: its values are "true" / "false"
            column = np.where(data[n], TRUE, FALSE).astype(object)
        values[idx[keep]] = column[keep]
        tags[n] = Tag.from_values(values)
    numeric: dict[str, np.ndarray] = {}
    for n in extra:
        # float64, as the features build compares prices with its band thresholds
        arr = np.full(len(ids), np.nan, dtype=np.float64)
        arr[idx[keep]] = np.asarray(data[n], dtype=np.float64)[keep]
        numeric[n] = arr
    return tags, numeric


def category_price_bands(features: Path) -> dict[str, tuple[float, float]] | None:
    """The snapshot's per-category price-band thresholds ``{category: (q_low, q_high)}``
    (``category_price_bands.parquet``; categories without priced lines left out, their band is
    unknown); None for a snapshot without the table."""
    path = features / "category_price_bands.parquet"
    if not path.exists():
        return None
    t = pq.read_table(path, columns=[Col.CATEGORY, "q_low", "q_high"]).to_pydict()
    return {str(c): (float(lo), float(hi)) for c, lo, hi in zip(t[Col.CATEGORY], t["q_low"], t["q_high"], strict=True)
            if c is not None and lo is not None and hi is not None and lo == lo and hi == hi}


def snapshot_tags(features: Path) -> TagRegistry:
    """The tags of the features snapshot in ``features``: its manifest's registry, or for a
    snapshot written before tags were recorded, its text columns (:func:`registry_of_table`)."""
    manifest = features / "manifest.json"
    meta = json.loads(manifest.read_text(encoding="utf-8"))
    if "tags" in meta:
        return TagRegistry.from_json(meta["tags"], f"{manifest}: tags")
    return TagRegistry((
        *registry_of_table(pq.read_table(features / "members.parquet"), "member", Col.MEMBER).tags,
        *registry_of_table(pq.read_table(features / "products.parquet"), "product", Col.PRODUCT).tags,
    ))


def model_tag_names(registry: TagRegistry) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The member and product tags a model is given: every single-valued tag of the snapshot
    (a multi-valued one, such as channel, has no one value per member)."""
    return (tuple(t.name for t in registry.of("member") if not t.multi),
            (*PRODUCT_ATTRIBUTES, *(t.name for t in registry.of("product") if not t.multi)))


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
    member_names, product_names = model_tag_names(snapshot_tags(paths.features))
    member_tags, _ = _tags(paths.features / "members.parquet", Col.MEMBER, train.members, member_names)
    product_tags, numeric = _tags(paths.features / "products.parquet", Col.PRODUCT, products, product_names)
    price = numeric.get("price")
    data = TrainData(train, member_tags, product_tags, price, category_price_bands(paths.features))
    return data, Split(train, test, cutoff, test_end)


def load_train(paths: DataPaths, as_of: date) -> TrainData:
    """Everything before ``as_of``: what a production model is trained on."""
    data, _ = load_split(paths, as_of, as_of)
    return data
