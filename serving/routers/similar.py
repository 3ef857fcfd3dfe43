"""Similar products (相似商品), and finding a product by id, name or category."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from serving.deps import KEYED, KeyFirstRoute, State, errors, get_caller, require
from serving.keys import Principal
from serving.schemas import ProductSearchResponse, SimilarResponse
from serving.service import products, similar

router = APIRouter(tags=["similar"], responses=errors(*KEYED), route_class=KeyFirstRoute)


@router.get(
    "/v1/products/{product_id}/similar",
    summary="Products most similar to a product (active products only)",
    response_model=SimilarResponse,
    responses=errors(404),
)
async def similar_products(
    state: State,
    _: Annotated[Principal, Depends(require("similar"))],
    product_id: Annotated[str, Path(min_length=1, max_length=200)],
    k: Annotated[int, Query(ge=1, le=10_000, description="At most max_k (100)")] = 10,
) -> Response:
    # encoded once with orjson (response_model documents the body)
    return Response(orjson.dumps(similar.similar_dict(state, product_id, k)), media_type="application/json")


@router.get(
    "/v1/products",
    summary="Find products by id or name (substring, any case) and/or category; most bought first",
)
async def search_products(
    state: State,
    _: Annotated[Principal, Depends(get_caller)],
    q: Annotated[str | None, Query(max_length=200, description="Part of a product id or name")] = None,
    category: Annotated[str | None, Query(max_length=200, description="Only this category")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> ProductSearchResponse:
    return products.search_products(state, q, category, limit)
