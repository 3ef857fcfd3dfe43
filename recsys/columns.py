"""Canonical column names: the only place they are spelled out.

Every table that crosses a module boundary uses these names; a retailer's own column names are
mapped onto them once, at ingest (see :mod:`recsys.data.mapping`).
"""

from __future__ import annotations


class Columns:
    # ids (always text)
    MEMBER = "member_id"
    PRODUCT = "product_id"
    # transactions
    TS = "ts"
    QUANTITY = "quantity"
    AMOUNT = "amount"  # what the member paid for the line (not per unit)
    COST = "cost"
    CHANNEL = "channel"
    STORE = "store_id"
    BASKET = "basket_id"
    UNIT_PRICE = "unit_price"  # derived: amount / quantity
    # products
    CATEGORY = "category"
    PRICE = "price"
    BRAND = "brand"
    NAME = "name"
    LAUNCHED_AT = "launched_at"
    # members
    JOINED_AT = "joined_at"
    AGE_GROUP = "age_group"
    REGION = "region"
    # channel identities
    EXTERNAL_ID = "external_id"


Col = Columns

# A product id this long or longer is taken for a retail barcode (EAN-13 / GS1), whose leading
# digits name the maker and, longer, the product line (ingest's brand_from_id_prefix, the
# hybrid's id-prefix brands and lines)
BARCODE_MIN_LENGTH = 12
