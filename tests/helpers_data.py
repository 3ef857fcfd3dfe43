"""Tiny data builders shared by the model and evaluation tests.

Everything here is deterministic (fixed seeds) and small enough that a whole test module that
fits every registered model runs in a few seconds.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa

from recsys.bundle import Bundle
from recsys.idmap import IdMap
from recsys.interactions import Interactions
from recsys.models import get_model
from recsys.models.base import Tag, TrainData

AS_OF = date(2001, 2, 1)


def literal_interactions(
    occasions: list[tuple[int, int, int]],
    n_members: int,
    n_products: int,
    quantity: list[float] | None = None,
    amount: list[float] | None = None,
    as_of: date = AS_OF,
) -> Interactions:
    """Interactions from literal ``(member, product, age_days)`` occasions; ids ``m0..`` / ``p0..``."""
    m, p, age = (np.array(col, dtype=np.int32) for col in zip(*occasions, strict=True))
    n = len(m)
    return Interactions(
        members=IdMap([f"m{i}" for i in range(n_members)]),
        products=IdMap([f"p{i}" for i in range(n_products)]),
        member=m,
        product=p,
        age_days=age,
        quantity=np.asarray(quantity if quantity is not None else np.ones(n), dtype=np.float32),
        amount=np.asarray(amount if amount is not None else np.ones(n), dtype=np.float32),
        as_of=as_of,
    )


def literal_data(
    occasions: list[tuple[int, int, int]],
    n_members: int,
    n_products: int,
    categories: list[str] | None = None,
    segments: list[str | None] | None = None,
) -> TrainData:
    x = literal_interactions(occasions, n_members, n_products)
    product_tags = {"category": Tag.from_values(categories)} if categories is not None else {}
    member_tags = {"value_segment": Tag.from_values(segments)} if segments is not None else {}
    return TrainData(x, member_tags, product_tags)


# ------------------------------------------------------------------------------ synthetic shop
N_MEMBERS = 200
N_PRODUCTS = 50
N_DAYS = 120
N_CATEGORIES = 5  # products 10c .. 10c+9 are category c
COLD_PRODUCT = N_PRODUCTS - 1  # never sold: a zero column


def synthetic_interactions(seed: int = 0) -> Interactions:
    """~200 members x 50 products over 120 days with repeat buying.

    Each member has 3 favourite products from one favourite category and shops every few days:
    on a shopping day they buy one or two favourites and, sometimes, a popular-ish product.
    Product 49 is never sold (a catalogue product with an empty column).
    """
    rng = np.random.default_rng(seed)
    sold = N_PRODUCTS - 1
    cat_of = np.arange(N_PRODUCTS) // (N_PRODUCTS // N_CATEGORIES)
    pop = 1.0 / (1.0 + np.arange(sold)) ** 0.7
    pop /= pop.sum()
    rows: set[tuple[int, int, int]] = set()
    for u in range(N_MEMBERS):
        cat = rng.integers(0, N_CATEGORIES)
        pool = np.where((cat_of == cat) & (np.arange(N_PRODUCTS) < sold))[0]
        fav = rng.choice(pool, size=3, replace=False)
        gap = int(rng.integers(3, 12))
        day = int(rng.integers(1, gap + 1))
        while day <= N_DAYS:
            for i in rng.choice(fav, size=int(rng.integers(1, 3)), replace=False):
                rows.add((u, int(i), day))
            if rng.random() < 0.4:
                rows.add((u, int(rng.choice(sold, p=pop)), day))
            day += gap + int(rng.integers(0, 3))
    occ = sorted(rows)
    m, p, age = (np.array(c, dtype=np.int32) for c in zip(*occ, strict=True))
    amount = (1.0 + (p % 7)).astype(np.float32)
    return Interactions(
        members=IdMap([f"m{i:04d}" for i in range(N_MEMBERS)]),
        products=IdMap([f"p{i:03d}" for i in range(N_PRODUCTS)]),
        member=m, product=p, age_days=age,
        quantity=np.ones(len(m), np.float32), amount=amount, as_of=AS_OF,
    )


def synthetic_data(seed: int = 0) -> TrainData:
    x = synthetic_interactions(seed)
    cat_of = np.arange(N_PRODUCTS) // (N_PRODUCTS // N_CATEGORIES)
    bands = np.array(["low", "mid", "high"], dtype=object)[np.arange(N_PRODUCTS) % 3]
    segments = np.array(["a", "b", "c", None], dtype=object)[np.arange(N_MEMBERS) % 4]
    return TrainData(
        x,
        member_tags={"value_segment": Tag.from_values(segments)},
        product_tags={
            "category": Tag.from_values([f"c{c}" for c in cat_of]),
            "price_band": Tag.from_values(bands),
        },
        product_price=(1.0 + np.arange(N_PRODUCTS) % 7).astype(np.float32),
    )


# ------------------------------------------------------------------ a tiny serving bundle
# (member, product, days before as_of): m0 is a regular of p0; p0 has the most buyers.
OCCASIONS = [
    (0, 0, 1), (0, 0, 8), (0, 0, 15), (0, 1, 3),
    (1, 1, 2), (1, 1, 9), (1, 2, 4),
    (2, 0, 5), (2, 3, 6),
    (3, 2, 1), (3, 2, 7), (3, 4, 2),
    (4, 0, 3), (4, 1, 3), (4, 2, 10),
    (5, 3, 4), (5, 0, 12),
]
MEMBERS = [f"m{i}" for i in range(6)]
PRODUCTS = [f"p{i}" for i in range(5)]
CATEGORIES = ["dairy", "dairy", "bakery", "bakery", "snacks"]
SEGMENTS = ["high", "mid", "low", "mid", "high", None]

BUNDLE_MODEL_PARAMS = {
    "popular": {},
    "simple_blend": {},
    "als": {"factors": 4, "iterations": 3, "num_threads": 1, "seed": 7, "weighting": "count"},
}


def tiny_data() -> TrainData:
    m, p, age = (np.array(col, dtype=np.int32) for col in zip(*OCCASIONS, strict=True))
    x = Interactions(
        members=IdMap(MEMBERS), products=IdMap(PRODUCTS), member=m, product=p, age_days=age,
        quantity=np.ones(len(m), np.float32), amount=np.full(len(m), 2.5, np.float32),
        as_of=date(2001, 2, 1),
    )
    return TrainData(
        x,
        member_tags={"value_segment": Tag.from_values(SEGMENTS)},
        product_tags={"category": Tag.from_values(CATEGORIES)},
    )


def tiny_bundle(model_name: str, **params: object) -> Bundle:
    data = tiny_data()
    model = get_model(model_name)({**BUNDLE_MODEL_PARAMS.get(model_name, {}), **params}).fit(data)
    return Bundle(
        model=model,
        members=data.interactions.members,
        products=data.interactions.products,
        member_table=pa.table({"member_id": MEMBERS, "value_segment": SEGMENTS}),
        product_table=pa.table({"product_id": PRODUCTS, "category": CATEGORIES}),
        meta={"run_id": "run-123", "metrics": {"recall@10": 0.25}},
    )


def reseal(path: Path) -> Path:
    """Record a hand-edited bundle's files in its ``bundle.json`` again (their sizes and
    SHA-256), so a test reaches the check behind the checksums: what a consistent but wrong
    bundle gets."""
    from recsys.bundle import file_manifest

    meta = json.loads((path / "bundle.json").read_text())
    meta["files"] = file_manifest(path)
    (path / "bundle.json").write_text(json.dumps(meta))
    return path
