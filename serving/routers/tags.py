"""The served model's tags (标签): what filters, options and profiles name, with their labels."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from serving.deps import State, errors, get_caller
from serving.keys import Principal
from serving.schemas import TagsResponse
from serving.service import tags as tag_service

router = APIRouter(tags=["tags"], responses=errors(401, 503))


@router.get("/v1/tags", summary="Member and product tags of the served model: names, labels, values (any key)")
async def tags(state: State, _: Annotated[Principal, Depends(get_caller)]) -> TagsResponse:
    return tag_service.tags(state)
