"""A planted campaign effect: the members a campaign contacted buy its target product with a known
extra probability during its measurement window, on top of whatever they bought anyway.

The synthetic purchases (:mod:`~recsys.data.synth.generator`) know nothing of campaigns; a test
or an experiment creates a campaign on them, then plants the effect on its *treated* members
only, so the true uplift is known: a contacted member who would not have bought converts with
probability ``p``, hence the expected difference in conversion between the contacted and the held
out is ``p x (1 - q)``, ``q`` the conversion without the campaign (:func:`planted_uplift`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.errors import InputError


def plant_campaign_effect(
    transactions: Path, out: Path, *, product_id: str, members: Sequence[str], start: date, days: int,
    probability: float, seed: int,
) -> int:
    """Write ``transactions`` plus one extra purchase of ``product_id`` by each of ``members`` with
    ``probability`` (seeded), at a uniform time in ``[start, start + days)``, to ``out``; returns how
    many were planted. The extra line is one unit at the product's median paid unit price, through
    the app, without a store or basket."""
    if not 0 <= probability <= 1:
        raise InputError(f"probability must be in [0, 1], got {probability}")
    table = pq.read_table(transactions)
    # the planted lines have no store or basket: every column may hold nulls in the output
    table = table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))
    rng = np.random.default_rng(seed)
    chosen = np.asarray(members, dtype=object)[rng.random(len(members)) < probability]
    n = len(chosen)
    sold = table.filter(pc.equal(table.column("product_id"), product_id))
    prices = sold.column("amount").to_numpy(zero_copy_only=False) / np.maximum(
        sold.column("quantity").to_numpy(zero_copy_only=False), 1e-9) if sold.num_rows else np.array([1.0])
    price = float(np.round(np.median(prices), 2))
    begin = datetime.combine(start, datetime.min.time())
    seconds = rng.integers(8 * 3600, days * 86_400 - 2 * 3600, n) if n else np.empty(0, np.int64)
    extra = {name: pa.nulls(n, table.schema.field(name).type) for name in table.column_names}
    extra["member_id"] = pa.array(chosen.tolist(), pa.string())
    extra["product_id"] = pa.array([product_id] * n, pa.string())
    extra["ts"] = pa.array([begin + timedelta(seconds=int(s)) for s in seconds], pa.timestamp("us"))
    for name, value in (("quantity", 1.0), ("amount", price), ("unit_price", price)):
        if name in extra:
            extra[name] = pa.array([value] * n, table.schema.field(name).type)
    if "channel" in extra:
        extra["channel"] = pa.array(["app"] * n, pa.string())
    planted = pa.table({name: extra[name].cast(table.schema.field(name).type) for name in table.column_names},
                       schema=table.schema)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables([table, planted]), out)
    return n


def planted_uplift(probability: float, baseline_conversion: float) -> float:
    """The expected uplift (contacted minus held-out conversion) of a planted effect."""
    return probability * (1.0 - baseline_conversion)
