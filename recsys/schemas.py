"""Canonical tables: which columns each has, which are required, and their types.

The types are DuckDB / Parquet logical types; ids are always text (``VARCHAR``) so that leading
zeros in card numbers and barcodes survive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys.columns import Col


@dataclass(frozen=True)
class TableSchema:
    name: str
    required: dict[str, str]
    optional: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> dict[str, str]:
        return {**self.required, **self.optional}


TRANSACTIONS = TableSchema(
    "transactions",
    required={
        Col.MEMBER: "VARCHAR",
        Col.PRODUCT: "VARCHAR",
        Col.TS: "TIMESTAMP",
        Col.QUANTITY: "DOUBLE",
        Col.AMOUNT: "DOUBLE",
    },
    optional={
        Col.CHANNEL: "VARCHAR",
        Col.STORE: "VARCHAR",
        Col.BASKET: "VARCHAR",
        Col.COST: "DOUBLE",
        # Line-level attributes of the product or the member. Flat sales exports (Ta-Feng is one)
        # carry them on every line; the product and member tables are then derived from the lines.
        Col.CATEGORY: "VARCHAR",
        Col.BRAND: "VARCHAR",
        Col.NAME: "VARCHAR",
        Col.AGE_GROUP: "VARCHAR",
        Col.REGION: "VARCHAR",
    },
)

# price is optional: a product master without one gets each product's median paid unit price.
PRODUCTS = TableSchema(
    "products",
    required={Col.PRODUCT: "VARCHAR", Col.CATEGORY: "VARCHAR"},
    optional={Col.PRICE: "DOUBLE", Col.BRAND: "VARCHAR", Col.NAME: "VARCHAR",
              Col.LAUNCHED_AT: "TIMESTAMP"},
)

MEMBERS = TableSchema(
    "members",
    required={Col.MEMBER: "VARCHAR"},
    optional={Col.JOINED_AT: "TIMESTAMP", Col.AGE_GROUP: "VARCHAR", Col.REGION: "VARCHAR"},
)

IDENTITIES = TableSchema(
    "identities",
    required={Col.CHANNEL: "VARCHAR", Col.EXTERNAL_ID: "VARCHAR", Col.MEMBER: "VARCHAR"},
)

TABLES: dict[str, TableSchema] = {
    s.name: s for s in (TRANSACTIONS, PRODUCTS, MEMBERS, IDENTITIES)
}

# Attributes that a transactions file may carry per line, grouped by the table they describe.
PRODUCT_LINE_ATTRIBUTES = (Col.CATEGORY, Col.BRAND, Col.NAME)
MEMBER_LINE_ATTRIBUTES = (Col.AGE_GROUP, Col.REGION)
