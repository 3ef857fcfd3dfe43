"""A retailer-style raw export of the same purchases (a second schema): gzip ``;`` CSV sales lines
with Chinese headers, a product master, members, channel identities and optional export noise,
mapped by the packaged ``sources/synth_retailer.toml``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.synth.generator import (
    AGE_GROUPS,
    CHANNELS,
    MICROSECONDS,
    PACK_SIZES,
    Catalogue,
    Members,
    SynthSpec,
    generate_chunks,
    member_chunks,
    prepare,
)
from recsys.data.synth.writing import (
    epoch_us,
    id_width,
    text_ids,
    toml_str,
    write_table,
    write_transactions,
)
from recsys.errors import InputError

RETAILER_NAME = "synth_retailer"  # the dataset name of the packaged mapping sources/synth_retailer.toml
RETAILER_FILES = {
    "transactions": "sales_lines.csv.gz",
    "products": "products.parquet",
    "members": "members.csv",
    "identities": "identities.csv",
}
# Sales lines: a POS / e-commerce back-office export, `;`-separated, gzip, Chinese headers,
# Chinese-style timestamps. 应收金额 (gross, before discounts) is there but not mapped.
RETAILER_LINE_COLUMNS = ("小票号", "销售时间", "门店", "渠道", "卡号", "商品编码", "数量", "应收金额", "实收金额")
RETAILER_TS_FORMAT = "%Y年%m月%d日 %H:%M:%S"
RETAILER_JOIN_FORMAT = "%d/%m/%Y"  # members.csv: day first
RETAILER_REGIONS = ("华北", "华南", "华东", "西北", "华中", "东北", "西南", "沿海")  # follows REGIONS
_RETAILER_DEPARTMENTS = (
    "乳品", "烘焙", "果蔬", "肉禽", "水产", "冷冻", "饮料", "零食",
    "粮油", "日化", "个护", "母婴", "宠物", "保健", "熟食", "酒类",
)  # follows DEPARTMENTS
RETAILER_BAG_SKU = "2000000000015"  # the till's carrier bag: sold on receipts, not in the catalogue
_BAG_PRICE = 0.3
# Export noise: each kind gets ``dirty_lines`` lines, each rejected by ingest for one reason.
RETAILER_NOISE = {
    "walk_in": "missing_member_id",  # a sale to a non-member: no card number
    "return": "non_positive_quantity",  # a refund line: negative quantity and amount
    "bag": "unknown_product",  # a carrier bag: a SKU the product master does not hold
    "duplicate": "duplicate",  # a line exported twice
}
_SALE, _RETURN, _WALK_IN = 0, 1, 2
_RECEIPT_PREFIX = ("T", "R", "W")


class _RetailerIds:
    """The retailer's own ids: member numbers, one account per channel, barcodes, store codes."""

    def __init__(self, spec: SynthSpec):
        n = spec.members
        rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(3,)))
        self.members = text_ids("VIP", np.arange(1, n + 1), id_width(n, 8))
        # One account per channel and member, numbered in an order unrelated to the member
        # number: a POS loyalty card, an app user id and a mini-programme open id (CHANNELS order).
        self.accounts = pa.concat_arrays([
            text_ids("62", 1 + rng.permutation(n), 10),
            text_ids("U", 100_000 + rng.permutation(n), id_width(100_000 + n, 8)),
            text_ids("oWX", rng.permutation(n), id_width(n, 9)),
        ])
        # 13-digit barcodes with a Chinese (69x) GS1 prefix; the bag's internal code comes last.
        self.skus = pa.concat_arrays([
            text_ids("69", 10_000_000_000 + rng.permutation(spec.products), 11),
            pa.array([RETAILER_BAG_SKU]),
        ])
        self.stores = text_ids("MD", np.arange(1, spec.effective_stores + 1), 4)
        self.channels = pa.array(CHANNELS, type=pa.string())
        self.prefixes = pa.array(_RECEIPT_PREFIX, type=pa.string())


def _retailer_chunks(
    spec: SynthSpec, cat: Catalogue, mem: Members, dirty_lines: int
) -> Iterator[dict[str, np.ndarray]]:
    """The canonical generator's chunks (the same purchases), reshaped as export lines.

    Each chunk is put in time order (receipt order within a second) and gets its share of the
    noise lines, drawn from a stream of their own so the clean lines do not depend on them.
    """
    bounds = member_chunks(mem.lines, spec.chunk_lines)
    sizes = np.array([mem.lines[lo:hi].sum() for lo, hi in bounds], dtype=np.float64)
    noise = np.diff(np.concatenate(([0], np.round(dirty_lines * np.cumsum(sizes) / sizes.sum())))).astype(np.int64)
    trips = noise_receipts = 0
    for i, chunk in enumerate(generate_chunks(spec, cat, mem)):
        n = len(chunk["member"])
        lines = {
            "member": chunk["member"],
            "channel": chunk["channel"],
            "store": chunk["store"],
            "seconds": chunk["seconds"],
            "product": chunk["product"],
            "quantity": chunk["quantity"].astype(np.int64),
            "gross": np.round(chunk["quantity"] * cat.price[chunk["product"]], 2),
            "amount": chunk["amount"],
            "receipt": trips + chunk["trip"].astype(np.int64),
            "kind": np.zeros(n, dtype=np.int8),
        }
        trips += int(chunk["trip"][-1]) + 1
        order = np.lexsort((lines["receipt"], lines["seconds"]))  # stable: a trip keeps its order
        lines = {k: v[order] for k, v in lines.items()}
        k = int(noise[i])
        if k:
            rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(4, i)))
            extra = _noise_lines(spec, cat, lines, k, noise_receipts, rng)
            noise_receipts += 2 * k
            # Each noise line goes in after the lines of its second: the export stays in time order.
            at = np.searchsorted(lines["seconds"], extra["seconds"], side="right")
            place = np.argsort(np.concatenate((2 * np.arange(n) + 1, 2 * at + 2)), kind="stable")
            lines = {key: np.concatenate((lines[key], extra[key]))[place] for key in lines}
        yield {**lines, "staple": chunk["staple"]}


def _noise_lines(
    spec: SynthSpec, cat: Catalogue, lines: dict[str, np.ndarray], k: int, receipt0: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """``k`` lines of each kind in :data:`RETAILER_NOISE`, copied from random clean lines."""
    n = len(lines["member"])

    def copy() -> dict[str, np.ndarray]:
        picked = rng.integers(0, n, k)
        return {key: v[picked] for key, v in lines.items()}

    walk_in = copy()  # at the till without a card: no member, a receipt of its own
    walk_in["member"][:] = -1
    walk_in["channel"][:] = CHANNELS.index("pos")
    walk_in["receipt"] = receipt0 + np.arange(k)
    walk_in["kind"][:] = _WALK_IN

    refund = copy()  # brought back one to seven days later, still inside the period
    last_second = spec.period_days * 86_400 - 1
    refund["seconds"] = np.minimum(refund["seconds"] + rng.integers(1, 8, k) * 86_400, last_second)
    for key in ("quantity", "gross", "amount"):
        refund[key] = -refund[key]
    refund["receipt"] = receipt0 + k + np.arange(k)
    refund["kind"][:] = _RETURN

    bag = copy()  # a carrier bag on the same receipt
    bag["product"][:] = spec.products  # the index of RETAILER_BAG_SKU
    bag["quantity"][:] = 1
    bag["gross"][:] = bag["amount"][:] = _BAG_PRICE

    twice = copy()  # an exact copy
    parts = (walk_in, refund, bag, twice)
    return {key: np.concatenate([p[key] for p in parts]) for key in lines}


def _retailer_lines_table(chunk: dict[str, np.ndarray], ids: _RetailerIds, n_members: int,
                          start_s: int) -> pa.Table:
    member = chunk["member"]
    account = pa.array(chunk["channel"].astype(np.int64) * n_members + member, mask=member < 0)
    ts = pa.array(start_s + chunk["seconds"], type=pa.int64()).cast(pa.timestamp("s"))
    receipt = pc.binary_join_element_wise(
        ids.prefixes.take(pa.array(chunk["kind"])),
        pc.utf8_lpad(pc.cast(pa.array(chunk["receipt"]), pa.string()), 9, "0"),
        "",
    )
    values = (
        receipt,
        pc.strftime(ts, format=RETAILER_TS_FORMAT),
        ids.stores.take(pa.array(chunk["store"])),
        ids.channels.take(pa.array(chunk["channel"])),
        ids.accounts.take(account),
        ids.skus.take(pa.array(chunk["product"])),
        pa.array(chunk["quantity"]),
        pa.array(chunk["gross"]),
        pa.array(chunk["amount"]),
    )
    return pa.Table.from_arrays(list(values), names=list(RETAILER_LINE_COLUMNS))


_RETAILER_LINES_SCHEMA = pa.schema(
    [(name, pa.string()) for name in RETAILER_LINE_COLUMNS[:6]]
    + [(RETAILER_LINE_COLUMNS[6], pa.int64()), (RETAILER_LINE_COLUMNS[7], pa.float64()),
       (RETAILER_LINE_COLUMNS[8], pa.float64())]
)


@contextmanager
def _csv_gz_sink(path: Path, schema: pa.Schema, delimiter: str) -> Iterator[Callable[[pa.Table], None]]:
    """A gzip-compressed CSV written table by table (header once; no quoting, ids stay bare)."""
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(delimiter=delimiter, quoting_style="none")
    with pa.CompressedOutputStream(str(path), "gzip") as stream, \
            pacsv.CSVWriter(stream, schema, write_options=options) as out:
        yield out.write_table


def _write_csv(table: pa.Table, path: Path) -> None:
    import pyarrow.csv as pacsv

    tmp = path.with_name(path.name + ".tmp")
    pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(quoting_style="none"))
    tmp.replace(path)


def _retailer_products_table(spec: SynthSpec, cat: Catalogue, ids: _RetailerIds) -> pa.Table:
    """The product master: barcode, category code, list price, brand, title, first-listed date."""
    n_c = spec.effective_categories
    dept = pa.array(_RETAILER_DEPARTMENTS).take(pa.array(np.arange(n_c) % len(_RETAILER_DEPARTMENTS)))
    codes = pc.binary_join_element_wise(
        dept, pc.utf8_lpad(pc.cast(pa.array(np.arange(1, n_c + 1)), pa.string()), 3, "0"), "-"
    )
    brand_names = text_ids("品牌", np.arange(1, cat.n_brands + 1), id_width(cat.n_brands, 4))
    category = codes.take(pa.array(cat.category))
    brand = brand_names.take(pa.array(cat.brand))
    title = pc.binary_join_element_wise(
        brand, category, pa.array(PACK_SIZES).take(pa.array(cat.pack)), " "
    )
    start_day = (spec.start - date(1970, 1, 1)).days
    listed = pa.array(start_day + cat.launch_day.astype(np.int32), type=pa.date32())
    return pa.table({
        "sku": ids.skus.slice(0, spec.products),
        "cat_code": category,
        "list_price": pa.array(cat.price),
        "brand_name": brand,
        "title": title,
        "first_listed": listed,
    })


def _retailer_members_table(spec: SynthSpec, mem: Members, ids: _RetailerIds) -> pa.Table:
    start_day = (spec.start - date(1970, 1, 1)).days
    joined = pa.array(start_day + mem.join_day, type=pa.date32())
    age = pa.array(AGE_GROUPS).take(pa.array(np.maximum(mem.age, 0), mask=mem.age < 0))
    return pa.table({
        "member_no": ids.members,
        "join_date": pc.strftime(joined, format=RETAILER_JOIN_FORMAT),
        "age_band": age,
        "area": pa.array(RETAILER_REGIONS).take(pa.array(mem.region)),
    })


def _retailer_identities_table(spec: SynthSpec, ids: _RetailerIds) -> pa.Table:
    """Every member's three accounts (channel, account id -> member number), member by member."""
    n, k = spec.members, len(CHANNELS)
    member = np.repeat(np.arange(n), k)
    channel = np.tile(np.arange(k), n)
    return pa.table({
        "channel": ids.channels.take(pa.array(channel)),
        "account_id": ids.accounts.take(pa.array(channel.astype(np.int64) * n + member)),
        "member_no": ids.members.take(pa.array(member)),
    })


def retailer_mapping_toml(out_dir: Path) -> str:
    """The packaged ``sources/synth_retailer.toml`` with its paths pointing into ``out_dir``."""
    from importlib import resources

    text = resources.files("recsys.data").joinpath("sources", f"{RETAILER_NAME}.toml").read_text(
        encoding="utf-8"
    )
    for file in RETAILER_FILES.values():
        line = f'path = "{RETAILER_NAME}/raw/{file}"'
        if line not in text:
            raise RuntimeError(f"sources/{RETAILER_NAME}.toml has no line {line!r}")
        text = text.replace(line, f"path = {toml_str(str(out_dir / file))}")
    return text


def synthesize_retailer(spec: SynthSpec, out_dir: Path, dirty_lines: int = 0) -> str:
    """Write the synthetic purchases as a retailer's raw export, in a layout unlike Ta-Feng's.

    The purchases are those :func:`synthesize` writes for the same spec (same members, products,
    trips and lines); only the layout differs, so the column-mapping config has to do the work:

    * ``sales_lines.csv.gz`` — gzip, ``;``-separated, Chinese headers (小票号 receipt, 销售时间
      ``2024年03月05日 14:23:01``, 门店 store, 渠道 channel, 卡号 the *account* used on that
      channel, 商品编码 barcode, 数量 quantity, 应收金额 gross, 实收金额 paid), in time order;
    * ``products.parquet`` — sku, cat_code, list_price, brand_name, title, first_listed (DATE);
    * ``members.csv`` — member_no, join_date (day first, ``31/12/2023``), age_band, area;
    * ``identities.csv`` — channel, account_id, member_no: a POS card, an app user id and a
      mini-programme open id per member, which ingest folds into the member number;
    * ``mapping.toml`` — the packaged ``sources/synth_retailer.toml`` with absolute paths.

    Parameters
    ----------
    spec
        Sizes, seed and model knobs; see :class:`SynthSpec`.
    out_dir
        Created if missing; existing files of the same names are replaced.
    dirty_lines
        Lines of each kind of export noise (:data:`RETAILER_NOISE`): walk-in sales without a card,
        refunds, carrier bags and lines exported twice. Ingest rejects exactly these
        ``4 * dirty_lines`` lines and keeps ``spec.lines``.

    Returns
    -------
    str
        A short human summary of what was written.

    Examples
    --------
    >>> s = synthesize_retailer(SynthSpec(members=200, products=50, lines=5_000), Path("/tmp/r"), 5)
    >>> sorted(p.name for p in Path("/tmp/r").iterdir())[:2]
    ['identities.csv', 'mapping.toml']
    """
    if isinstance(dirty_lines, bool) or not isinstance(dirty_lines, int) or dirty_lines < 0:
        raise InputError(f"synth: dirty_lines must be an integer >= 0, got {dirty_lines!r}")
    t0 = time.perf_counter()
    out_dir, catalogue, members = prepare(spec, out_dir)
    ids = _RetailerIds(spec)
    paths = {table: out_dir / file for table, file in RETAILER_FILES.items()}
    meta = {b"recsys.synth": json.dumps({**spec.to_dict(), "layout": RETAILER_NAME,
                                         "dirty_lines": dirty_lines}, sort_keys=True).encode()}
    start_s = epoch_us(spec.start) // MICROSECONDS
    try:
        write_table(_retailer_products_table(spec, catalogue, ids), paths["products"], meta)
        _write_csv(_retailer_members_table(spec, members, ids), paths["members"])
        _write_csv(_retailer_identities_table(spec, ids), paths["identities"])
        staples = write_transactions(
            _retailer_chunks(spec, catalogue, members, dirty_lines),
            lambda chunk: _retailer_lines_table(chunk, ids, spec.members, start_s),
            partial(_csv_gz_sink, schema=_RETAILER_LINES_SCHEMA, delimiter=";"),
            paths["transactions"],
        )
        mapping = out_dir / "mapping.toml"
        mapping.write_text(retailer_mapping_toml(out_dir), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"synth: cannot write into {out_dir}: {exc}") from exc
    seconds = time.perf_counter() - t0

    buyers = int((members.lines > 0).sum())
    rows = spec.lines + len(RETAILER_NOISE) * dirty_lines
    noise = (f"; plus {dirty_lines:,} lines each of "
             + ", ".join(f"{kind} ({reason})" for kind, reason in RETAILER_NOISE.items())
             if dirty_lines else "")
    return (
        f"synth (retailer export): {rows:,} sales lines = {spec.lines:,} purchases{noise}\n"
        f"  {spec.members:,} members ({buyers:,} with purchases) x {len(CHANNELS)} channel accounts, "
        f"{spec.products:,} products, {spec.effective_categories:,} categories, "
        f"{spec.effective_stores:,} stores, {spec.start}..{spec.end}, seed {spec.seed}; staple repeats "
        f"{staples / spec.lines:.0%} of purchases; {seconds:.1f} s\n"
        f"  files: {out_dir}/{{{','.join(RETAILER_FILES.values())}}}\n"
        f"  ingest with: recsys data ingest {mapping}"
    )
