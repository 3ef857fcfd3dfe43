"""Finding products for the console (``/v1/products``): by id or name, and category."""

from __future__ import annotations

import numpy as np

from recsys.errors import InputError
from serving.schemas import ProductInfo, ProductSearchResponse
from serving.service.common import listing, product_category, product_column, product_name
from serving.state import ServingState


def search_products(state: ServingState, q: str | None, category: str | None, limit: int) -> ProductSearchResponse:
    """Products whose id or name contains ``q`` (case-insensitive) and, when given, of
    ``category``; an exact id match first, then the most bought."""
    n = state.n_products
    keep = np.ones(n, dtype=bool)
    if category:
        if state.category.code(category) < 0:
            raise InputError(f"unknown category {category!r}; categories: {listing(state.category.labels)}")
        keep &= state.category.mask([category])
    ids = state.products.external_ids
    if q:
        needle = q.strip().casefold()
        names = state.product_names if state.product_names is not None else np.full(n, None, dtype=object)
        hit = np.fromiter(
            (needle in str(i).casefold() or (nm is not None and needle in str(nm).casefold())
             for i, nm in zip(ids, names, strict=True)),
            dtype=bool, count=n,
        )
        keep &= hit
    buyers = np.asarray((state.history > 0).sum(axis=0)).ravel()
    rows = np.flatnonzero(keep)
    exact = np.array([str(ids[r]).casefold() == (q or "").strip().casefold() for r in rows], dtype=bool)
    rows = rows[np.lexsort((rows, -buyers[rows], ~exact))]
    brands, prices = product_column(state, "brand"), product_column(state, "price")
    out = []
    for r in rows[:limit].tolist():
        price = prices[r] if prices is not None else None
        out.append(ProductInfo(
            product_id=str(ids[r]), name=product_name(state, r), category=product_category(state, r),
            brand=str(brands[r]) if brands is not None and brands[r] else None,
            price=float(price) if price is not None and np.isfinite(price) else None,
            active=bool(state.product_active[r]), buyers=int(buyers[r]),
        ))
    return ProductSearchResponse(model_version=state.info.version, total=len(rows), products=out)
