"""The served bundle's member tags as requests use them: filter masks and API key scopes.

Built once per bundle (:func:`serving.state.build_state`) from its tag registry and tag columns
(:mod:`recsys.tags`). A filter names tags and values (OR within a tag, AND across tags; a
multi-valued tag such as channel passes when the member holds any of the values); a key's scope is
the same kind of condition, applied to everything the key gets (see :mod:`serving.keys`).

Per-value member masks are made when first asked for and the :data:`MASK_CACHE_SIZE` most recently
used are kept: combining cached masks costs ~0.2 ms for a million members, making one a few ms,
and a region or store tag of a large retailer has too many values to hold a mask for each
(``experiments/bench_tags.py``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from recsys.models.base import Tag
from recsys.tags import MultiTag, TagRegistry, listing
from serving.errors import ForbiddenError

# an API key's scope: (tag, allowed values) pairs; a member is in it when they hold one of the
# values of every tag
Scope = tuple[tuple[str, tuple[str, ...]], ...]
# per-value member masks kept for filters and scopes (one byte per member each)
MASK_CACHE_SIZE = 64


class MemberTagIndex:
    """Filters and scopes over the bundle's members (rows ``0 .. n_members - 1``)."""

    def __init__(self, tags: TagRegistry, columns: dict[str, Tag | MultiTag], n_members: int, version: str):
        self.tags = tags
        self.columns = columns
        self.n_members = n_members
        self.version = version  # the model's, for messages
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._codes = {name: {label: code for code, label in enumerate(col.labels)} for name, col in columns.items()}
        self._scopes: dict[Scope, list[tuple[Tag | MultiTag, frozenset[int]]]] = {}  # one entry per key at most

    def mask(self, filters: dict[str, list[str]]) -> np.ndarray:
        """Members whose tags pass ``filters`` (a fresh array the caller may change).
        :class:`~recsys.errors.InputError` naming what exists for an unknown tag or value."""
        self.tags.check_filters(filters, "member")
        mask = np.ones(self.n_members, dtype=bool)
        for name, wanted in filters.items():
            keep = np.zeros(self.n_members, dtype=bool)
            for value in wanted:
                keep |= self.value_mask(name, value)
            mask &= keep
        return mask

    def value_mask(self, name: str, value: str) -> np.ndarray:
        """Members holding ``value`` of tag ``name`` (read-only; cached, see the module docstring)."""
        key = (name, value)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        column = self.columns[name]
        if isinstance(column, MultiTag):
            mask = column.mask([value])
        else:
            code = column.code(value)
            mask = column.codes == code if code >= 0 else np.zeros(len(column.codes), dtype=bool)
        mask.setflags(write=False)
        with self._lock:
            self._cache[key] = mask
            while len(self._cache) > MASK_CACHE_SIZE:
                self._cache.popitem(last=False)
        return mask

    def scope_mask(self, scope: Scope) -> np.ndarray:
        """Members inside a key's ``scope``; :class:`ForbiddenError` (403) when the scope names a
        tag this bundle does not have: the key cannot be checked, so it gets nothing."""
        return self.mask(self._scope_filters(scope))

    def in_scope(self, row: int, scope: Scope) -> bool:
        """Whether member ``row`` is inside ``scope``: a row outside the bundle's members (unknown,
        or first seen in live events, whose tags are not computed yet) is outside every scope.
        A few microseconds: the picks path of a scoped key."""
        if not 0 <= row < self.n_members:
            return False
        checks = self._scopes.get(scope)
        if checks is None:
            checks = [(self.columns[name], frozenset(self._codes[name][v] for v in values))
                      for name, values in self._scope_filters(scope).items()]
            if len(self._scopes) < 10_000:
                self._scopes[scope] = checks
        for column, codes in checks:
            if isinstance(column, MultiTag):
                if not column.holds_any(row, codes):
                    return False
            elif int(column.codes[row]) not in codes:
                return False
        return True

    def _scope_filters(self, scope: Scope) -> dict[str, list[str]]:
        missing = [name for name, _ in scope if name not in self.columns]
        if missing:
            raise ForbiddenError(
                f"this key's scope names tag(s) {', '.join(map(repr, missing))}, which the model being served "
                f"({self.version}) does not have (tags: {listing(list(self.columns)) or 'none'}); "
                "fix the key's scope"
            )
        # a scope value nobody holds (a store without members yet) selects nobody, never an error
        return {name: [v for v in values if v in self._codes[name]] for name, values in scope}
