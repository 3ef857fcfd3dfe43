"""What both exports write with: Arrow text ids, Parquet tables with the spec as provenance, and
the transactions written chunk by chunk in a thread beside the generation of the next chunk."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.synth.generator import SynthSpec


def text_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """``prefix`` + zero-padded numbers, built in Arrow (no Python string per id)."""
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, type=pa.int64()), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def id_width(n: int, minimum: int) -> int:
    return max(minimum, len(str(n)))


def epoch_us(day: date) -> int:
    return int((datetime(day.year, day.month, day.day) - datetime(1970, 1, 1)) / timedelta(microseconds=1))


_PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 1}
_ROW_GROUP = 1 << 20


def provenance(spec: SynthSpec) -> dict[bytes, bytes]:
    """Parquet key-value metadata recording the spec that made a file."""
    return {b"recsys.synth": json.dumps(spec.to_dict(), sort_keys=True).encode()}


def write_table(table: pa.Table, path: Path, metadata: dict[bytes, bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    table = table.replace_schema_metadata(metadata)
    pq.write_table(table, tmp, row_group_size=_ROW_GROUP, **_PARQUET_OPTIONS)
    tmp.replace(path)


def toml_str(value: str) -> str:
    # JSON string escapes (\\, \", \uXXXX) are valid TOML basic-string escapes.
    return json.dumps(value)


@contextmanager
def parquet_sink(path: Path, schema: pa.Schema) -> Iterator[Callable[[pa.Table], None]]:
    """A Parquet file written table by table (one or more row groups per table)."""
    with pq.ParquetWriter(path, schema, **_PARQUET_OPTIONS) as out:
        yield lambda table: out.write_table(table, row_group_size=_ROW_GROUP)


def write_transactions(
    chunks: Iterator[dict[str, np.ndarray]],
    to_table: Callable[[dict[str, np.ndarray]], pa.Table],
    sink: Callable[[Path], AbstractContextManager[Callable[[pa.Table], None]]],
    path: Path,
) -> int:
    """Write chunks in order while the next one is generated; returns staple lines written.

    Building the Arrow table (text ids), encoding and compression run in a writer thread
    (Arrow releases the GIL), overlapping numpy generation of the next chunk on the other core.
    At most three chunks are alive at once: generated, queued and being written. ``sink(tmp)``
    opens the output file and gives the function that appends one table to it.
    """
    tmp = path.with_name(path.name + ".tmp")
    pending: queue.Queue[dict[str, np.ndarray] | None] = queue.Queue(maxsize=1)
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            with sink(tmp) as write:
                while (chunk := pending.get()) is not None:
                    write(to_table(chunk))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the generating thread
            failure.append(exc)
            while pending.get() is not None:  # drain so the producer never blocks forever
                pass

    thread = threading.Thread(target=writer, name="synth-writer", daemon=True)
    thread.start()
    staples = 0
    try:
        for chunk in chunks:
            if failure:
                break
            staples += int(chunk.pop("staple").sum())
            pending.put(chunk)
    finally:
        pending.put(None)
        thread.join()
    if failure:
        tmp.unlink(missing_ok=True)
        raise failure[0]
    tmp.replace(path)
    return staples
