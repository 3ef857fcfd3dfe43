"""Interaction matrices under every weighting, the occasion reductions, the Parquet loader and IdMap.

Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.idmap import IdMap
from recsys.interactions import WEIGHTINGS, Interactions, load_interactions

# (member, product, age_days), deliberately not sorted by age
OCC = [
    (0, 0, 30), (0, 0, 1), (0, 1, 30),
    (1, 1, 60), (1, 2, 45), (1, 2, 15), (1, 2, 90),
    (2, 0, 5),
    (3, 2, 7),
]  # member 4 never buys
QTY = [2, 1, 1, 3, 1, 1, 2, 1, 1]
AMT = [5.0, 2.5, 1.0, 9.0, 4.0, 4.0, 8.0, 3.0, 2.0]
# count (purchase occasions) per member x product
COUNT = [[2, 1, 0], [0, 1, 3], [1, 0, 0], [0, 0, 1], [0, 0, 0]]


@pytest.fixture
def x() -> Interactions:
    m, p, a = (np.array(c, dtype=np.int32) for c in zip(*OCC, strict=True))
    return Interactions(
        IdMap([f"m{i}" for i in range(5)]), IdMap(["p0", "p1", "p2"]), m, p, a,
        np.array(QTY, np.float32), np.array(AMT, np.float32), date(2001, 2, 1),
    )


def test_count_and_binary(x):
    assert x.shape == (5, 3)
    count = x.matrix("count")
    assert count.dtype == np.float32
    assert count.toarray().tolist() == COUNT
    assert x.matrix("binary").toarray().tolist() == (np.array(COUNT) > 0).astype(float).tolist()


def test_log(x):
    assert x.matrix("log").toarray() == pytest.approx(np.log1p(np.array(COUNT, float)))


def test_recency_half_life(x):
    # 0.5 ** (age / 30): age 30 -> 0.5, age 60 -> 0.25, age 15 -> 2 ** -0.5, age 90 -> 0.125
    r = x.matrix("recency", half_life_days=30.0).toarray()
    assert r[0, 1] == pytest.approx(0.5)
    assert r[1, 1] == pytest.approx(0.25)
    assert r[0, 0] == pytest.approx(0.5 ** (1 / 30) + 0.5)
    assert r[1, 2] == pytest.approx(2 ** -0.5 + 2 ** -1.5 + 0.125)
    assert r[2, 0] == pytest.approx(0.5 ** (5 / 30))
    # the half-life is a parameter: age 60 at half-life 60 is one half
    assert x.matrix("recency", half_life_days=60.0).toarray()[1, 1] == pytest.approx(0.5)


def test_amount_and_quantity_sum_the_occasions(x):
    assert x.matrix("amount").toarray().tolist() == [
        [7.5, 1.0, 0.0], [0.0, 9.0, 16.0], [3.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]
    assert x.matrix("quantity").toarray().tolist() == [
        [3.0, 1.0, 0.0], [0.0, 3.0, 4.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def test_bm25_shape_positivity_and_value(x):
    w = x.matrix("bm25", bm25_k1=1.2, bm25_b=0.75)
    assert w.shape == (5, 3) and w.dtype == np.float32
    assert (w.toarray() > 0).tolist() == (np.array(COUNT) > 0).tolist()  # same pattern, all positive
    # BM25 of the counts: N = 5 members, every product has 2 buyers -> idf = log(5) - log(3);
    # row sums 3, 4, 1, 1, 0 -> mean 9/5; m1 x p2: count 3, length norm 0.25 + 0.75 * 4 / 1.8
    idf = np.log(5) - np.log(3)
    norm = 0.25 + 0.75 * 4 / 1.8
    assert w[1, 2] == pytest.approx(3 * 2.2 / (1.2 * norm + 3) * idf, rel=1e-5)
    # more occasions of equally common products weigh more
    assert w[1, 2] > w[1, 1]
    # k1 is passed through
    assert w[1, 2] != pytest.approx(x.matrix("bm25", bm25_k1=100.0)[1, 2])


def test_every_weighting_keeps_the_purchase_pattern(x):
    assert set(WEIGHTINGS) == {"binary", "count", "log", "bm25", "recency", "amount", "quantity"}
    for w in WEIGHTINGS:
        assert (x.matrix(w).toarray() > 0).tolist() == (np.array(COUNT) > 0).tolist(), w


def test_unknown_weighting_is_an_error(x):
    with pytest.raises(ValueError, match="unknown weighting"):
        x.matrix("tfidf")  # type: ignore[arg-type]


def test_last_age_keeps_the_minimum_age(x):
    # m0 x p0 ages {30, 1} -> 1; m1 x p2 ages {45, 15, 90} -> 15 (not the sum 150)
    assert x.last_age().toarray().tolist() == [
        [1, 30, 0], [0, 60, 15], [5, 0, 0], [0, 0, 7], [0, 0, 0]]


def test_last_age_is_each_pairs_youngest_age_in_any_row_order():
    # the occasions unsorted (a carved window is built without the constructor's sort)
    rng = np.random.default_rng(3)
    n = 5_000
    member, product, age = rng.integers(0, 40, n), rng.integers(0, 30, n), rng.integers(1, 200, n)
    x = Interactions(IdMap([f"m{i}" for i in range(40)]), IdMap([f"p{i}" for i in range(30)]),
                     member.astype(np.int32), product.astype(np.int32), age.astype(np.int32),
                     np.ones(n, np.float32), np.ones(n, np.float32), date(2001, 2, 1))
    want = np.zeros((40, 30))
    for u, i, a in zip(member, product, age, strict=True):
        want[u, i] = a if want[u, i] == 0 else min(want[u, i], a)
    got = x.last_age()
    assert got.has_sorted_indices and got.dtype == np.float32
    np.testing.assert_array_equal(got.toarray(), want)


def test_member_days_counts_distinct_days(x):
    # m0 has 3 occasions on 2 days (p0 and p1 both at age 30); m1 4 days; m4 none
    assert x.member_days().tolist() == [2, 4, 1, 1, 0]


def test_member_last_age(x):
    assert x.member_last_age().tolist() == [1, 15, 5, 7, 10**6]


# ------------------------------------------------------------------------------ Parquet loader
AS_OF = date(2001, 2, 1)
TX_SCHEMA = pa.schema([
    ("member_id", pa.string()), ("product_id", pa.string()), ("ts", pa.timestamp("us")),
    ("quantity", pa.float64()), ("amount", pa.float64()),
])


@pytest.fixture
def tx_file(tmp_path):
    lines = [
        ("001", "0100", datetime(2001, 1, 31, 23, 59), 1.0, 2.0),   # age 1
        ("001", "0100", datetime(2001, 1, 31, 8, 0), 2.0, 3.0),     # same day: one occasion
        ("001", "0200", datetime(2001, 1, 2, 10, 0), 1.0, 1.5),     # age 30
        ("002", "0100", datetime(2001, 2, 1, 0, 0), 1.0, 9.0),      # exactly as_of: excluded
        ("003", "0300", datetime(2001, 2, 5, 12, 0), 1.0, 9.0),     # after as_of: excluded
        ("002", "0200", datetime(2001, 1, 1, 0, 0), 1.0, 4.0),      # age 31, exactly at start
        ("002", "0200", datetime(2000, 12, 31, 23, 59), 1.0, 4.0),  # age 32, before start
    ]
    cols = list(zip(*lines, strict=True))
    path = tmp_path / "transactions.parquet"
    pq.write_table(pa.table({n: list(c) for n, c in zip(TX_SCHEMA.names, cols, strict=True)}, schema=TX_SCHEMA),
                   path)
    return path


def _triples(x: Interactions) -> list[tuple[str, str, int, float, float]]:
    return sorted(zip(x.members.to_external(x.member).tolist(), x.products.to_external(x.product).tolist(),
                      x.age_days.tolist(), x.quantity.tolist(), x.amount.tolist(), strict=True))


def test_load_cuts_at_as_of_midnight_and_groups_a_day(tx_file):
    x = load_interactions(tx_file, AS_OF)
    assert x.as_of == AS_OF
    # ids stay text with their leading zeros; 003 bought only after as_of
    assert x.members.external_ids.tolist() == ["001", "002"]
    assert x.products.external_ids.tolist() == ["0100", "0200"]
    assert _triples(x) == [
        ("001", "0100", 1, 3.0, 5.0),
        ("001", "0200", 30, 1.0, 1.5),
        ("002", "0200", 31, 1.0, 4.0),
        ("002", "0200", 32, 1.0, 4.0),
    ]
    assert x.member.dtype == np.int32 and x.age_days.dtype == np.int32


def test_load_start_bound_is_inclusive(tx_file):
    x = load_interactions(tx_file, AS_OF, start=date(2001, 1, 1))
    assert _triples(x) == [
        ("001", "0100", 1, 3.0, 5.0),
        ("001", "0200", 30, 1.0, 1.5),
        ("002", "0200", 31, 1.0, 4.0),
    ]


def test_load_with_fixed_maps_keeps_never_sold_products_and_drops_unknown_ids(tx_file):
    products = IdMap(["0050", "0100", "0200", "0999"])  # 0050 and 0999 never sold
    members = IdMap(["002", "001"])  # a fixed order that is not sorted
    x = load_interactions(tx_file, AS_OF, members=members, products=products)
    assert x.members is members and x.products is products
    assert x.matrix("count").toarray().tolist() == [[0, 0, 2, 0], [0, 1, 1, 0]]
    # a member outside the map is dropped, not added
    only = load_interactions(tx_file, AS_OF, members=IdMap(["001"]), products=products)
    assert only.matrix("count").toarray().tolist() == [[0, 1, 1, 0]]


# ------------------------------------------------------------------------------ IdMap
def test_idmap_round_trip():
    m = IdMap(["b", "007", "a"])
    assert len(m) == 3
    assert m.to_index(["a", "007"]).tolist() == [2, 1]
    assert m.to_external([2, 0]).tolist() == ["a", "b"]
    assert m.to_external(m.to_index(["007", "b", "a"])).tolist() == ["007", "b", "a"]
    assert m.get("b") == 0 and m.get("zz") == -1
    assert "007" in m and "7" not in m
    assert m.to_index(["a", "zz"], missing="ignore").tolist() == [2, -1]
    with pytest.raises(KeyError, match="zz"):
        m.to_index(["a", "zz"])


def test_idmap_from_values_is_sorted_distinct_text():
    m = IdMap.from_values(["b", "a", "b", "010"])
    assert m.external_ids.tolist() == ["010", "a", "b"]
    assert m == IdMap(["010", "a", "b"]) and m != IdMap(["a", "b", "010"])


def test_idmap_is_immutable():
    source = ["x", "y"]
    m = IdMap(source)
    with pytest.raises(ValueError):
        m.external_ids[0] = "z"
    source[0] = "changed"  # the map holds its own copy
    assert m.to_external([0]).tolist() == ["x"]
    with pytest.raises(AttributeError):
        m.extra = 1  # type: ignore[attr-defined]  # __slots__: no new attributes


def test_idmap_rejects_duplicates():
    with pytest.raises(ValueError, match="unique"):
        IdMap(["a", "a"])


class _DictMap:
    """What IdMap was before it searched sorted arrays: a dict of the ids (the reference)."""

    def __init__(self, ids: list[str]):
        self.ids, self.index = ids, {e: i for i, e in enumerate(ids)}

    def to_index(self, ids: list[object]) -> list[int]:
        return [self.index.get(e, -1) if isinstance(e, str) else -1 for e in ids]


@pytest.mark.parametrize("source", ["list", "numpy", "arrow"])
@pytest.mark.parametrize("batch", ["searched", "dict"])
def test_idmap_answers_as_a_dict_of_its_ids_would(source: str, batch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import recsys.idmap

    if batch == "dict":  # every batch looked up in the dict made on first use
        monkeypatch.setattr(recsys.idmap, "DICT_BATCH", 0)
    rng = np.random.default_rng(3)
    # unsorted, of several lengths, numeric-looking, non-ASCII, a prefix of another, empty
    ids = [f"M{i:0{int(rng.integers(1, 9))}d}" for i in rng.permutation(3000)]
    ids = list(dict.fromkeys([*ids, "", "會員-042", "a", "ab", "abc", "b\u00e9", "007", "7", "Z"]))
    made = {"list": ids, "numpy": np.asarray(ids, dtype=object),
            "arrow": pa.chunked_array([ids[:1000], ids[1000:]])}[source]
    m, ref = IdMap(made), _DictMap(ids)
    assert len(m) == len(ids)
    assert m.external_ids.dtype == object and m.external_ids.tolist() == ids  # row order kept, str items
    assert all(type(x) is str for x in m.external_ids[:50])
    unknown = ["M-1", "zz", "a\x00", "ab ", "", "\u00e9", "M00000000000", "abcd", "會員", "A", "7.0"]
    queries = [*rng.choice(ids, 500).tolist(), *unknown, "", "a"]
    want = ref.to_index(queries)
    assert m.to_index(queries, missing="ignore").tolist() == want
    assert m.to_index(np.asarray(queries, dtype=object), missing="ignore").tolist() == want
    assert [m.get(q) for q in queries] == want
    assert [q in m for q in queries] == [w >= 0 for w in want]
    assert m.to_index([5, None, "a"], missing="ignore").tolist() == [-1, -1, ref.index["a"]]  # not text: unknown
    assert m.get(5) == -1 and 5 not in m  # type: ignore[arg-type]
    known = [q for q, w in zip(queries, want, strict=True) if w >= 0]
    assert m.to_index(known).dtype == np.int64 and m.to_index(known).tolist() == ref.to_index(known)
    with pytest.raises(KeyError, match="M-1"):
        m.to_index([known[0], "M-1"])
    rows = rng.integers(len(ids), size=200)
    assert m.to_external(rows).tolist() == [ids[r] for r in rows]
    assert m.to_external(np.array([-1, 0])).tolist() == [ids[-1], ids[0]]  # numpy indexing, as before
    assert m.to_external(rows.reshape(20, 10)).shape == (20, 10)
    with pytest.raises(IndexError):
        m.to_external([len(ids)])
    assert m.to_index([], missing="ignore").tolist() == [] and m.to_external([]).tolist() == []


def test_idmap_of_ten_thousand_sorted_ids_keeps_their_order_and_numbers_as_text() -> None:
    ids = [f"{i:05d}" for i in range(10_000)]  # sorted already: no permutation is kept
    m = IdMap(pa.array(ids))
    assert m.to_index(["00000", "09999", "10000", "0"], missing="ignore").tolist() == [0, 9999, -1, -1]
    assert IdMap([3, 1, 2]).external_ids.tolist() == ["3", "1", "2"]  # numbers are their text
    assert IdMap(np.array([3, 1, 2])).get("1") == 1
    with pytest.raises(ValueError, match="null"):
        IdMap(pa.array(["a", None]))


def test_load_with_an_empty_fixed_member_map_keeps_it_empty(tx_file):
    x = load_interactions(tx_file, AS_OF, members=IdMap([]))
    assert len(x.members) == 0 and len(x.member) == 0


def test_weighted_sums_do_not_depend_on_the_order_rows_arrive_in():
    # occasions are stored in a total order (member, product, age): float32 recency sums come out
    # bit-identical however the query returned the rows (a parallel scan does not fix an order)
    rng = np.random.default_rng(3)
    n = 4000
    member, product = rng.integers(0, 5, n), rng.integers(0, 4, n)
    age = rng.integers(1, 400, n)
    ones = np.ones(n, np.float32)
    maps = IdMap([f"m{i}" for i in range(5)]), IdMap([f"p{i}" for i in range(4)])
    want = Interactions.from_occasions(*maps, member, product, age, ones, ones, date(2001, 2, 1)).matrix("recency", 14.0)
    for _ in range(3):
        o = rng.permutation(n)
        got = Interactions.from_occasions(*maps, member[o], product[o], age[o], ones, ones, date(2001, 2, 1))
        assert got.matrix("recency", 14.0).data.tobytes() == want.data.tobytes()


def test_load_maps_ids_in_code_point_order_as_idmap_does(tmp_path):
    # ids of mixed scripts and cases: the map built from the window is IdMap.from_values' order
    ids = ["会员9", "Zed", "apple", "Äpfel", "007", "会员10", "zed"]
    path = tmp_path / "tx.parquet"
    n = len(ids)
    pq.write_table(pa.table({
        "member_id": ids, "product_id": [f"p{i % 3}" for i in range(n)],
        "ts": [datetime(2001, 1, 10 + i) for i in range(n)], "quantity": [1.0] * n, "amount": [2.0] * n,
    }, schema=TX_SCHEMA), path)
    x = load_interactions(path, AS_OF)
    assert x.members == IdMap.from_values(ids) and x.products == IdMap.from_values(["p0", "p1", "p2"])
    assert _triples(x) == sorted((m, f"p{i % 3}", (AS_OF - date(2001, 1, 10 + i)).days, 1.0, 2.0)
                                 for i, m in enumerate(ids))
