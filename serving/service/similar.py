"""Similar products (``/v1/products/{id}/similar``)."""

from __future__ import annotations

from typing import Any

from recsys.errors import InputError
from serving.schemas import SimilarResponse
from serving.service.common import product_row
from serving.state import ServingState


def similar_dict(state: ServingState, product_id: str, k: int) -> dict[str, Any]:
    """A :class:`~serving.schemas.SimilarResponse` as a plain dict."""
    if k > state.settings.max_k:
        raise InputError(f"k must be between 1 and {state.settings.max_k}; got {k}")
    row = product_row(state, product_id)
    idx, sc = state.scorer.similar(row, k, state.product_active)
    ok = idx >= 0
    text = state.text
    assert text is not None
    return {
        "product_id": product_id,
        "model_version": state.info.version,
        "similar": [
            {"product_id": text.ids[p], "score": s, "category": text.categories[p], "name": text.names[p]}
            for p, s in zip(idx[ok].tolist(), sc[ok].tolist(), strict=True)
        ],
    }


def similar(state: ServingState, product_id: str, k: int) -> SimilarResponse:
    return SimilarResponse.model_validate(similar_dict(state, product_id, k))
