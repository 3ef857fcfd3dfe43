"""External ids <-> matrix rows. Converted only at the edges: external ids in, rows inside,
external ids out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class IdMap:
    """An immutable, ordered mapping from external (text) ids to dense internal indices.

    Examples
    --------
    >>> m = IdMap(["b", "a", "c"])
    >>> m.to_index(["a", "c"]).tolist()
    [1, 2]
    >>> m.to_external([0, 2]).tolist()
    ['b', 'c']
    """

    __slots__ = ("_external", "_index")

    def __init__(self, external_ids: Iterable[str]):
        ext = np.asarray(list(external_ids) if not isinstance(external_ids, np.ndarray) else external_ids)
        ext = ext.astype(str).astype(object)
        index = {e: i for i, e in enumerate(ext.tolist())}
        if len(index) != len(ext):
            raise ValueError("IdMap: external ids must be unique")
        ext.setflags(write=False)
        self._external = ext
        self._index = index

    @classmethod
    def from_values(cls, values: Iterable[str]) -> IdMap:
        """Distinct values, sorted, so the same set always gives the same map."""
        return cls(np.unique(np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=str)))

    def __len__(self) -> int:
        return len(self._external)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and np.array_equal(self._external, other._external)

    @property
    def external_ids(self) -> np.ndarray:
        return self._external

    def get(self, external_id: str, default: int = -1) -> int:
        return self._index.get(external_id, default)

    def to_index(self, external_ids: Sequence[str], missing: str = "raise") -> np.ndarray:
        """Internal indices; ``missing='raise'`` raises KeyError, ``'ignore'`` returns -1."""
        if missing == "raise":
            try:
                return np.fromiter((self._index[e] for e in external_ids), dtype=np.int64)
            except KeyError as exc:
                raise KeyError(f"unknown id: {exc.args[0]!r}") from None
        return np.fromiter((self._index.get(e, -1) for e in external_ids), dtype=np.int64)

    def to_external(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._external[np.asarray(indices, dtype=np.int64)]
