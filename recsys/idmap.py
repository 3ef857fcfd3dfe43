"""External ids <-> matrix rows. Converted only at the edges: external ids in, rows inside,
external ids out.

The map holds its ids as one Arrow string array (row order) and, for lookups, their UTF-8 bytes
as a sorted fixed-width numpy array searched with ``np.searchsorted`` -- both built with vector
operations on the Arrow buffers, never one Python object per id: ten million member ids take a
fraction of a second to map (a dict of Python strings took 7-9 s), and a server holds no
per-id Python objects. UTF-8 bytes sort as the text's code points do, so the order is Python's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa


def _utf8(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(the concatenated UTF-8 bytes as uint8, offsets as int64) of a large_string array."""
    offsets_buf, data_buf = values.buffers()[1:3]
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data[offsets[0] : offsets[-1]], offsets - offsets[0]


def _fixed_width(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each string's UTF-8 bytes as one ``S{width}`` numpy array (zero-padded to the longest),
    and whether each holds a NUL byte (which the padding could not tell apart)."""
    data, offsets = _utf8(values)
    lengths = np.diff(offsets)
    n = len(lengths)
    width = max(int(lengths.max(initial=0)), 1)
    if n and (lengths == width).all():  # every id as long as the longest: the bytes as they are
        fixed = np.ascontiguousarray(data).view(f"S{width}")
    else:
        padded = np.zeros((n, width), dtype=np.uint8)
        padded[np.arange(width) < lengths[:, None]] = data  # row-major: the bytes in their order
        fixed = padded.view(f"S{width}").reshape(n)
    nul = np.zeros(n, dtype=bool)
    at = np.flatnonzero(data == 0)
    if len(at):
        nul[np.searchsorted(offsets, at, side="right") - 1] = True
    return fixed, nul


def _as_strings(values: Any) -> pa.Array:
    """Arrow ``large_string`` of ``values``; an element that is not text (or None) comes out null."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise TypeError(f"IdMap: ids must be text, not {values.type}")
        return values.cast(pa.large_string()) if values.type != pa.large_string() else values
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        return pa.array(values, pa.large_string())
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    try:
        return pa.array(items, pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError):
        return pa.array([x if isinstance(x, str) and _encodable(x) else None for x in items], pa.large_string())


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no id can be it
        return False
    return True


# a lookup of more ids than this (and than an eighth of the map) uses a dict of the ids
DICT_BATCH = 100_000


class IdMap:
    """An immutable, ordered mapping from external (text) ids to dense internal indices.

    Examples
    --------
    >>> m = IdMap(["b", "a", "c"])
    >>> m.to_index(["a", "c"]).tolist()
    [1, 2]
    >>> m.to_external([0, 2]).tolist()
    ['b', 'c']
    >>> m.get("zz"), "a" in m
    (-1, True)
    """

    __slots__ = ("_ids", "_keys", "_order", "_external", "_dict")

    def __init__(self, external_ids: Iterable[str] | pa.Array | pa.ChunkedArray):
        """``external_ids`` in row order: text (an Arrow string column, a numpy array, a list);
        numbers and other values are taken as their text, as ``str()`` writes it."""
        if isinstance(external_ids, pa.Array | pa.ChunkedArray):
            ids = _as_strings(external_ids)
            if ids.null_count:
                raise ValueError("IdMap: external ids must not be null")
        else:
            ext = external_ids if isinstance(external_ids, np.ndarray) else np.asarray(list(external_ids))
            ids = _as_strings(ext.astype(str))  # numbers become their text, as they always did
        keys, nul = _fixed_width(ids)
        if nul.any():
            raise ValueError("IdMap: external ids must not contain NUL characters")
        order: np.ndarray | None = None
        if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():  # not sorted and distinct already
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            if (keys[1:] == keys[:-1]).any():
                raise ValueError("IdMap: external ids must be unique")
        keys.setflags(write=False)
        self._ids = ids
        self._keys = keys  # sorted UTF-8 bytes
        self._order = order  # sorted position -> row; None: the rows are in sorted order
        self._external: np.ndarray | None = None
        self._dict: dict[str, int] | None = None

    @classmethod
    def from_values(cls, values: Iterable[str]) -> IdMap:
        """Distinct values, sorted, so the same set always gives the same map."""
        return cls(np.unique(np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=str)))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, external_id: object) -> bool:
        return self.get(external_id) >= 0  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and len(self) == len(other) and self._ids.equals(other._ids)

    __hash__ = None  # type: ignore[assignment]

    @property
    def external_ids(self) -> np.ndarray:
        """The ids in row order, as a read-only numpy array of ``str`` (made on first use: at ten
        million ids that is a second and ~600 MB of Python strings a server never asks for)."""
        ext = self._external
        if ext is None:
            ext = self._ids.to_numpy(zero_copy_only=False).astype(object, copy=False)
            ext.setflags(write=False)
            self._external = ext
        return ext

    def get(self, external_id: str, default: int = -1) -> int:
        if not isinstance(external_id, str):
            return default
        try:
            key = external_id.encode("utf-8")
        except UnicodeEncodeError:
            return default
        if b"\0" in key or not len(self._keys):
            return default
        pos = int(np.searchsorted(self._keys, key))
        if pos == len(self._keys) or self._keys[pos] != key:
            return default
        return pos if self._order is None else int(self._order[pos])

    def to_index(self, external_ids: Sequence[str], missing: str = "raise") -> np.ndarray:
        """Internal indices; ``missing='raise'`` raises KeyError, ``'ignore'`` returns -1.

        A batch searches the sorted ids (a few microseconds an id); a batch of more than
        :data:`DICT_BATCH` ids and an eighth of the map (training's joins of every purchase line)
        looks them up in a dict of the ids made on first use instead: a fifth of a microsecond
        an id once made, in the time two searches of the map's size would take."""
        if len(external_ids) > max(DICT_BATCH, len(self) // 8):
            return self._dict_index(external_ids, missing)
        queries = _as_strings(external_ids)
        if not len(queries):
            return np.zeros(0, dtype=np.int64)
        keys, nul = _fixed_width(queries.fill_null(""))
        known = ~nul & queries.is_valid().to_numpy(zero_copy_only=False)
        if len(self._keys):
            pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
            known &= self._keys[pos] == keys
            rows = pos if self._order is None else self._order[pos]
            out = np.where(known, rows, -1).astype(np.int64)
        else:
            known[:] = False
            out = np.full(len(keys), -1, dtype=np.int64)
        if missing == "raise" and not known.all():
            first = int(np.flatnonzero(~known)[0])
            item = external_ids[first] if isinstance(external_ids, list | tuple | np.ndarray) else queries[first].as_py()
            raise KeyError(f"unknown id: {item!r}")
        return out

    def _dict_index(self, external_ids: Sequence[str], missing: str) -> np.ndarray:
        index = self._dict
        if index is None:
            index = self._dict = {e: i for i, e in enumerate(self.external_ids.tolist())}
        if missing == "raise":
            try:
                return np.fromiter((index[e] for e in external_ids), dtype=np.int64, count=len(external_ids))
            except (KeyError, TypeError):  # TypeError: an id that is not even hashable
                first = next(e for e in external_ids if not isinstance(e, str) or e not in index)
                raise KeyError(f"unknown id: {first!r}") from None
        return np.fromiter((index.get(e, -1) if isinstance(e, str) else -1 for e in external_ids), dtype=np.int64,
                           count=len(external_ids))

    def to_external(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The ids of ``indices`` (numpy indexing: negative counts from the end; IndexError when
        out of range), as a numpy array of ``str``."""
        idx = np.asarray(indices, dtype=np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} ids")
        if self._external is not None:
            return self._external[idx]
        flat = np.where(idx < 0, idx + n, idx).ravel()
        out = self._ids.take(pa.array(flat)).to_numpy(zero_copy_only=False).astype(object, copy=False)
        return out.reshape(idx.shape) if idx.ndim else out[0]
