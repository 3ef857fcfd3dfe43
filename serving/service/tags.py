"""The served bundle's tags (``/v1/tags``, and the tags of ``/v1/audiences/options``): names,
labels and values from the bundle's registry (:mod:`recsys.tags`), so that clients -- the console's
filter form and member view among them -- never spell a tag out themselves."""

from __future__ import annotations

import numpy as np

from recsys.tags import Entity, tag_counts
from serving.schemas import TagInfo, TagsResponse, TagValueInfo
from serving.state import Scope, ServingState


def tag_infos(
    state: ServingState, entity: Entity | None = None, *, counts: bool = False, scope: Scope | None = None
) -> list[TagInfo]:
    """Every tag of the bundle (of ``entity`` when given), in registry order; with ``counts``,
    the members holding each member tag's values (those in ``scope`` for a scoped key, whose scope
    tags then list only the scope's values)."""
    rows = None
    if counts:
        rows = np.arange(state.members.n_base) if scope is None else np.flatnonzero(state.scope_mask(scope))
    limits = dict(scope or ())
    out = []
    for tag in state.tags.of(entity) if entity else state.tags:
        held: dict[str, int] = {}
        if rows is not None and tag.entity == "member":
            column = state.member_tags[tag.name]
            per, _ = tag_counts(column, rows)
            held = {label: int(n) for label, n in zip(column.labels, per.tolist(), strict=True)}
        values = [
            TagValueInfo(value=v.value, zh=v.zh, en=v.en, members=held.get(v.value, 0) if rows is not None else None)
            for v in tag.values
            if tag.name not in limits or v.value in limits[tag.name]
        ]
        out.append(TagInfo(
            name=tag.name, entity=tag.entity, zh=tag.zh, en=tag.en, multi=tag.multi, open=tag.open,
            kind=tag.kind, description=tag.description, values=values,
        ))
    return out


def tags(state: ServingState) -> TagsResponse:
    """Every tag of the served bundle, member tags first."""
    ordered = [*tag_infos(state, "member"), *tag_infos(state, "product")]
    return TagsResponse(model_version=state.info.version, tags=ordered)
