"""The canonical-named export: source-style Parquet files whose columns carry the canonical names,
and the identity column mapping that ``recsys data ingest`` reads."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.columns import Col
from recsys.data.synth.generator import (
    AGE_GROUPS,
    CHANNELS,
    DEPARTMENTS,
    MICROSECONDS,
    PACK_SIZES,
    REGIONS,
    Catalogue,
    Members,
    SynthSpec,
    generate_chunks,
    prepare,
)
from recsys.data.synth.writing import (
    epoch_us,
    id_width,
    parquet_sink,
    provenance,
    text_ids,
    toml_str,
    write_table,
    write_transactions,
)
from recsys.errors import InputError

TRANSACTIONS_SCHEMA = pa.schema(
    [
        (Col.MEMBER, pa.string()),
        (Col.PRODUCT, pa.string()),
        (Col.TS, pa.timestamp("us")),
        (Col.QUANTITY, pa.float64()),
        (Col.AMOUNT, pa.float64()),
        (Col.CHANNEL, pa.string()),
        (Col.STORE, pa.string()),
    ]
)


class _Ids:
    """Text ids for every member, product and store, built once and taken per chunk."""

    def __init__(self, spec: SynthSpec):
        self.members = text_ids("M", np.arange(1, spec.members + 1), id_width(spec.members, 7))
        self.products = text_ids("P", np.arange(1, spec.products + 1), id_width(spec.products, 6))
        n_stores = spec.effective_stores
        self.stores = text_ids("S", np.arange(1, n_stores + 1), id_width(n_stores, 4))
        self.channels = pa.array(CHANNELS, type=pa.string())


def _chunk_table(chunk: dict[str, np.ndarray], ids: _Ids, start_us: int) -> pa.Table:
    ts = pa.array(start_us + chunk["seconds"] * MICROSECONDS, type=pa.int64()).cast(pa.timestamp("us"))
    return pa.Table.from_arrays(
        [
            ids.members.take(pa.array(chunk["member"])),
            ids.products.take(pa.array(chunk["product"])),
            ts,
            pa.array(chunk["quantity"]),
            pa.array(chunk["amount"]),
            ids.channels.take(pa.array(chunk["channel"])),
            ids.stores.take(pa.array(chunk["store"])),
        ],
        schema=TRANSACTIONS_SCHEMA,
    )


def _products_table(spec: SynthSpec, cat: Catalogue, ids: _Ids, start_us: int) -> pa.Table:
    n_c = spec.effective_categories
    dept = np.arange(n_c) % len(DEPARTMENTS)
    category_names = pc.binary_join_element_wise(
        pa.array(DEPARTMENTS).take(pa.array(dept)),
        pc.utf8_lpad(pc.cast(pa.array(np.arange(1, n_c + 1)), pa.string()), 3, "0"),
        "-",
    )
    brand_names = text_ids("B", np.arange(1, cat.n_brands + 1), id_width(cat.n_brands, 5))
    category = category_names.take(pa.array(cat.category))
    brand = brand_names.take(pa.array(cat.brand))
    name = pc.binary_join_element_wise(
        brand, category, pa.array(PACK_SIZES).take(pa.array(cat.pack)), " "
    )
    launched = pa.array(start_us + cat.launch_day.astype(np.int64) * 86_400 * MICROSECONDS).cast(
        pa.timestamp("us")
    )
    return pa.table(
        {
            Col.PRODUCT: ids.products,
            Col.CATEGORY: category,
            Col.PRICE: pa.array(cat.price),
            Col.BRAND: brand,
            Col.NAME: name,
            Col.LAUNCHED_AT: launched,
        }
    )


def _members_table(mem: Members, ids: _Ids, start_us: int) -> pa.Table:
    joined = pa.array(start_us + mem.join_day.astype(np.int64) * 86_400 * MICROSECONDS).cast(pa.timestamp("us"))
    age = pa.array(AGE_GROUPS).take(pa.array(np.maximum(mem.age, 0), mask=mem.age < 0))
    return pa.table(
        {
            Col.MEMBER: ids.members,
            Col.JOINED_AT: joined,
            Col.AGE_GROUP: age,
            Col.REGION: pa.array(REGIONS).take(pa.array(mem.region)),
        }
    )


def mapping_toml(name: str, transactions: Path, products: Path, members: Path) -> str:
    """A column-mapping config that maps the synthetic files' columns onto themselves."""
    tables = (
        ("transactions", transactions, TRANSACTIONS_SCHEMA.names),
        ("products", products, [Col.PRODUCT, Col.CATEGORY, Col.PRICE, Col.BRAND, Col.NAME, Col.LAUNCHED_AT]),
        ("members", members, [Col.MEMBER, Col.JOINED_AT, Col.AGE_GROUP, Col.REGION]),
    )
    out = [
        "# Column mapping for synthetic data written by `recsys data synth`.",
        "# Source columns already carry the canonical names, so every mapping is the identity.",
        f"name = {toml_str(name)}",
    ]
    for table, path, columns in tables:
        out += ["", f"[{table}]", f"path = {toml_str(str(path))}", "", f"[{table}.columns]"]
        out += [f"{col} = {toml_str(col)}" for col in columns]
    return "\n".join(out) + "\n"


def synthesize(spec: SynthSpec, out_dir: Path) -> str:
    """Write synthetic source files and their column mapping into ``out_dir``.

    Writes ``transactions.parquet`` (member_id, product_id, ts, quantity, amount, channel,
    store_id), ``products.parquet`` (product_id, category, price, brand, name, launched_at),
    ``members.parquet`` (member_id, joined_at, age_group, region) and ``mapping.toml``, an
    identity column mapping with absolute paths, ready for ``recsys data ingest``. Each Parquet
    file records the spec in its key-value metadata under ``recsys.synth`` (JSON).

    Parameters
    ----------
    spec
        Sizes, seed and model knobs; see :class:`SynthSpec`.
    out_dir
        Created if missing; existing files of the same names are replaced.

    Returns
    -------
    str
        A short human summary of what was written.

    Raises
    ------
    InputError
        When ``out_dir`` cannot be written (bad sizes are refused by :class:`SynthSpec` itself).

    Examples
    --------
    >>> summary = synthesize(SynthSpec(members=200, products=50, lines=5_000), Path("/tmp/s"))
    >>> Path("/tmp/s/mapping.toml").exists()
    True
    """
    t0 = time.perf_counter()
    out_dir, catalogue, members = prepare(spec, out_dir)
    ids = _Ids(spec)
    start_us = epoch_us(spec.start)

    paths = {t: out_dir / f"{t}.parquet" for t in ("transactions", "products", "members")}
    try:
        meta = provenance(spec)
        write_table(_products_table(spec, catalogue, ids, start_us), paths["products"], meta)
        write_table(_members_table(members, ids, start_us), paths["members"], meta)
        staples = write_transactions(
            generate_chunks(spec, catalogue, members),
            lambda chunk: _chunk_table(chunk, ids, start_us),
            partial(parquet_sink, schema=TRANSACTIONS_SCHEMA.with_metadata(meta)),
            paths["transactions"],
        )
        mapping = out_dir / "mapping.toml"
        mapping.write_text(
            mapping_toml("synth", paths["transactions"], paths["products"], paths["members"]),
            encoding="utf-8",
        )
    except OSError as exc:
        raise InputError(f"synth: cannot write into {out_dir}: {exc}") from exc
    seconds = time.perf_counter() - t0

    buyers = int((members.lines > 0).sum())
    never_sold = int((catalogue.weight == 0).sum())
    late = int((catalogue.launch_day >= 0).sum())
    return (
        f"synth: {spec.lines:,} lines, {spec.members:,} members ({buyers:,} with purchases), "
        f"{spec.products:,} products ({late:,} launched in the period, {never_sold:,} never sold), "
        f"{spec.effective_categories:,} categories, {spec.effective_stores:,} stores, "
        f"{spec.start}..{spec.end}, seed {spec.seed}; staple repeats {staples / spec.lines:.0%} "
        f"of lines; {seconds:.1f} s ({spec.lines / max(seconds, 1e-9) / 1e6:.2f} M lines/s)\n"
        f"  files: {out_dir}/{{transactions,products,members}}.parquet\n"
        f"  ingest with: recsys data ingest {mapping}"
    )
