"""The serving bundle: one folder that carries everything the server needs.

Layout::

    bundle.json        format version, model name, run id, trained-on date, metrics, config, and
                       ``tags``: the tag registry (:mod:`recsys.tags`) of the features snapshot
                       the model was trained with -- every tag's labels, values and SQL
    model/             the fitted recommender (``Recommender.save``): ``model.json`` and one ``.npy``
                       file per array under ``arrays/``, memory-mapped read-only at load (format 1:
                       one ``arrays.npz``, read whole: an npz member cannot be mapped)
    members.parquet    member_id in matrix-row order + every member tag of ``tags`` (+ a few
                       aggregates: recency, frequency, ...)
    products.parquet   product_id in matrix-column order + category, price, brand, name + every
                       product tag of ``tags``
    pre_ranked.npz     optional: every member's top-N products per mode, ranked offline
                       (:mod:`recsys.precompute`); ``bundle.json`` describes it under ``pre_ranked``
    indexes/           optional: FAISS indexes over the model's vectors (``members.faiss``, and
                       ``products.faiss`` / ``similar.faiss`` for a large catalogue), built when
                       the bundle was made (:mod:`recsys.ann`); ``bundle.json`` describes each
                       under ``indexes`` (kind, size, cells, calibrated nprobe and recall, build
                       time, file size)

``bundle.json`` lists every other file under ``files`` with its size and SHA-256, and
:func:`load_bundle` checks them: every size before anything is read, then each file's SHA-256 in
background threads (:class:`FileChecks`; hashlib works outside the GIL), hashed in the order the
loader reads the parts so that each part is decoded only once its files have matched, while the
files after it are still being hashed -- at ten million members, hashing ~6 GB one file after the
other took longer than the rest of the load. A truncated download or a flipped byte is refused
naming the file, never half-read. A file a reader cannot decode (a bundle written before the list,
damaged where no checksum looks) is refused the same way, naming the file.

Loadable without any training code. Format 2 (this release) keeps the model's arrays as ``.npy``
files; a format 1 bundle (``model/arrays.npz``) still loads, read into memory as before; a bundle
of another format version is refused with a message that says what to do.

The pre-ranked lists are an optional part of format 1, not a new format: a bundle without them
(older bundles, small test bundles) loads as before and is scored live, and a reader that does not
know the file ignores it and scores live too -- the lists change how fast picks are answered,
never what they are. When ``bundle.json`` names the file, it must be there and fit the model, or
the bundle is refused as incomplete.

The tags are optional in the same way: a bundle written before tags were recorded gets a registry
read from its tables (every text column a tag, labelled where a built-in tag has its name, values
as found; see :func:`recsys.tags.registry_of_table`). A bundle that has ``tags`` must carry a
column for each.

Which live events a bundle already holds -- its **events watermark** (:func:`events_watermark`) --
is the start (00:00 UTC) of the day its data ends (``as_of`` in ``bundle.json``): it was trained on
every purchase before that instant, and a server replays into it only the live events at or after
it (live events are the same purchases the retailer's export delivers later). The events log may
drop an event once it is below the watermark of every bundle that is served or could be loaded
(``recsys events trim``, :meth:`serving.events.EventStore.trim`).

The indexes are optional in the same way: a bundle without them (older bundles, models without
vectors, vectors small enough to search exactly) loads as before and a server builds what it needs
at load; with them, a server memory-maps them and is ready without building an index (at ten
million members that is minutes of k-means and cell assignment). They change how fast a server is
ready, never what it answers beyond the approximate index's measured recall. ``recsys bundle index
DIR`` adds them to an existing bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import threading
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.ann import INDEX_DIR, INDEX_NAMES, AnnIndex, load_index, save_index
from recsys.columns import Col
from recsys.errors import RecsysError
from recsys.idmap import IdMap
from recsys.models.base import ModelStateVersionError, Recommender, Tag
from recsys.precompute import FILE_NAME as PRE_RANKED_FILE
from recsys.precompute import PreRanked
from recsys.tags import MultiTag, TagRegistry, registry_of_table, tag_column

# 2: the model's arrays are one .npy file each (memory-mapped at load) instead of one arrays.npz;
# a bundle of an older version this release still reads is in READS
FORMAT_VERSION = 2
READS = (1, 2)
HASH_CHUNK = 1 << 20
# the order load_bundle reads the parts in: files are hashed in this order, so a part is checked
# just before it is read while the larger files after it are hashed
LOAD_ORDER = ("members.parquet", "products.parquet", "model/model.json", "model", PRE_RANKED_FILE, INDEX_DIR)
HASH_THREADS = 4  # at most (and at most the machine's cores): bundle files hashed in parallel
# what numpy, zipfile and pyarrow raise on a file that is not what it should be
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, KeyError, IndexError, TypeError, ValueError, zipfile.BadZipFile, zlib.error, struct.error,
)


class BundleError(RecsysError):
    """A bundle that cannot be served: missing, broken or of another format version."""


DATE_KEYS = ("as_of", "trained_on", "train_end")  # bundle.json keys that say when the data ends


def data_end(meta: dict[str, Any]) -> date | None:
    """The day a bundle's data ends (exclusive): ``as_of`` / ``trained_on`` / ``train_end`` in
    ``bundle.json``, else the day it was saved; None when it records neither."""
    for key in (*DATE_KEYS, "saved_at"):
        value = meta.get(key)
        if value:
            try:
                return date.fromisoformat(str(value)[:10])
            except ValueError:
                continue
    return None


def events_watermark(meta: dict[str, Any]) -> datetime | None:
    """The bundle's events watermark (see the module docstring): 00:00 UTC of :func:`data_end`.
    A live event whose purchase time is before it is in the bundle's data already."""
    end = data_end(meta)
    return None if end is None else watermark_of(end)


def watermark_of(day: date) -> datetime:
    """00:00 UTC of ``day``: the events watermark of a bundle whose data ends (exclusive) that day."""
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


@dataclass
class Bundle:
    model: Recommender
    members: IdMap
    products: IdMap
    member_table: pa.Table
    product_table: pa.Table
    meta: dict[str, Any] = field(default_factory=dict)
    pre_ranked: PreRanked | None = None  # offline pick lists (recsys.precompute), when computed
    tags: TagRegistry | None = None  # the snapshot's tags; None: read from the tables (older bundles)
    indexes: dict[str, AnnIndex] = field(default_factory=dict)  # FAISS indexes built with the bundle (recsys.ann)
    # the registry read from the tables (older bundles), for the tables it was read from
    _read_tags: tuple[pa.Table, pa.Table, TagRegistry] | None = field(default=None, init=False, repr=False,
                                                                      compare=False)

    @property
    def tag_registry(self) -> TagRegistry:
        """The bundle's tags: :attr:`tags`, or for an older bundle the text columns of its tables
        (read once: every distinct value of every text column)."""
        if self.tags is not None:
            return self.tags
        read = self._read_tags
        if read is None or read[0] is not self.member_table or read[1] is not self.product_table:
            registry = TagRegistry((*registry_of_table(self.member_table, "member", Col.MEMBER).tags,
                                    *registry_of_table(self.product_table, "product", Col.PRODUCT).tags))
            read = self._read_tags = (self.member_table, self.product_table, registry)
        return read[2]

    def member_tags(self, names: tuple[str, ...] | None = None) -> dict[str, Tag | MultiTag]:
        """Every member tag (or those in ``names``) as a column aligned with the member rows."""
        return {
            t.name: tag_column(t, self.member_table.column(t.name))
            for t in self.tag_registry.of("member")
            if (names is None or t.name in names) and t.name in self.member_table.column_names
        }

    def save(self, path: Path | str) -> Path:
        return save_bundle(path, self)


def save_bundle(path: Path | str, bundle: Bundle) -> Path:
    """Write ``bundle`` to a fresh folder (replacing one that is there)."""
    path = Path(path)
    if bundle.member_table.column(Col.MEMBER).to_pylist() != bundle.members.external_ids.tolist():
        raise ValueError("member_table must list member ids in the model's row order")
    if bundle.product_table.column(Col.PRODUCT).to_pylist() != bundle.products.external_ids.tolist():
        raise ValueError("product_table must list product ids in the model's column order")
    if bundle.pre_ranked is not None:
        bundle.pre_ranked.check(len(bundle.members), len(bundle.products))
    if bundle.tags is not None:
        _check_tag_columns(bundle.tags, bundle.member_table, bundle.product_table)
    for name, ann in bundle.indexes.items():
        _check_index(name, ann.meta, len(bundle.members), len(bundle.products))
    if path.exists():  # only once the new bundle is known to be consistent
        shutil.rmtree(path)
    path.mkdir(parents=True)
    bundle.model.save(path / "model")
    pq.write_table(bundle.member_table, path / "members.parquet")
    pq.write_table(bundle.product_table, path / "products.parquet")
    meta = {k: v for k, v in bundle.meta.items() if k not in ("pre_ranked", "tags", "indexes")}  # this bundle's own
    if bundle.pre_ranked is not None:
        bundle.pre_ranked.save(path / PRE_RANKED_FILE)
        meta["pre_ranked"] = {**bundle.pre_ranked.meta, "file": PRE_RANKED_FILE, "n": bundle.pre_ranked.n,
                              "modes": list(bundle.pre_ranked.modes)}
    if bundle.indexes:
        meta["indexes"] = write_indexes(path, bundle.indexes)
    meta = {
        **meta,
        "format_version": FORMAT_VERSION,
        "model": bundle.model.name,
        "n_members": len(bundle.members),
        "n_products": len(bundle.products),
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if bundle.tags is not None:
        meta["tags"] = bundle.tags.to_json()
    meta["files"] = file_manifest(path)
    (path / "bundle.json").write_text(json.dumps(meta, indent=1, default=str))
    return path


def _sha256(path: Path, stop: threading.Event | None = None) -> str:
    """The file's SHA-256 (hashlib and the reads release the GIL: files hash in parallel threads);
    ``stop``: give up (returns "") when it is set."""
    digest = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            if stop is not None and stop.is_set():
                return ""
            digest.update(view[:n])
    return digest.hexdigest()


def _hash_threads() -> int:
    return max(1, min(HASH_THREADS, os.cpu_count() or 1))


def file_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file in the bundle folder but
    ``bundle.json`` (which carries the list)."""
    files = [f for f in sorted(path.rglob("*")) if f.is_file() and f.relative_to(path).as_posix() != "bundle.json"]
    with ThreadPoolExecutor(_hash_threads(), thread_name_prefix="bundle-hash") as pool:
        digests = list(pool.map(_sha256, files))
    return {f.relative_to(path).as_posix(): {"bytes": f.stat().st_size, "sha256": d}
            for f, d in zip(files, digests, strict=True)}


class FileChecks:
    """The check of every file ``bundle.json`` lists: presence and size at once (raises
    :class:`BundleError` naming the first that is wrong), then each file's SHA-256 in background
    threads, in the order given (the order the loader reads them). :meth:`wait` blocks until the
    files a reader is about to decode have matched, so nothing is decoded before its check, while
    the files that follow are hashed during the decoding; :meth:`wait_all` before the bundle is
    handed out. Use as a context manager: leaving it stops the hashing of what is left."""

    def __init__(self, path: Path, files: Any, first: tuple[str, ...] = ()):
        if not isinstance(files, dict):
            raise BundleError(f"{path}/bundle.json: 'files' must be an object; re-export the bundle")
        self.path = path
        for rel, want in files.items():
            file = path / rel
            if not isinstance(want, dict) or ".." in Path(rel).parts or Path(rel).is_absolute():
                raise BundleError(f"{path}/bundle.json: bad entry for {rel!r} under 'files'; re-export the bundle")
            if not file.is_file():
                raise BundleError(f"{path}: bundle is incomplete or corrupt ({rel} is missing); re-export it")
            size = file.stat().st_size
            if size != want.get("bytes"):
                raise BundleError(
                    f"{path}: bundle is incomplete or corrupt ({rel} has {size:,} bytes, bundle.json says "
                    f"{want.get('bytes')}: truncated or replaced); re-export or download it again"
                )
        rank = {name: i for i, name in enumerate(first)}

        def order(rel: str) -> tuple[int, str]:
            top = next((i for name, i in rank.items() if rel == name or rel.startswith(name + "/")), len(rank))
            return top, rel

        self._want = {rel: files[rel].get("sha256") for rel in sorted(files, key=order)}
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(_hash_threads(), thread_name_prefix="bundle-hash")
        self._futures: dict[str, Future[str]] = {
            rel: self._pool.submit(_sha256, path / rel, self._stop) for rel in self._want
        }

    def wait(self, *names: str) -> None:
        """Block until every listed file that is ``name`` or under ``name/`` has matched its
        SHA-256; :class:`BundleError` names the first that does not."""
        for rel, fut in self._futures.items():
            if any(rel == n or rel.startswith(n.rstrip("/") + "/") for n in names):
                self._check(rel, fut)

    def wait_all(self) -> None:
        for rel, fut in self._futures.items():
            self._check(rel, fut)

    def _check(self, rel: str, fut: Future[str]) -> None:
        if fut.result() != self._want[rel]:
            raise BundleError(
                f"{self.path}: bundle is incomplete or corrupt ({rel} does not match its SHA-256 in bundle.json: "
                "damaged in storage or transfer); re-export or download it again"
            )

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FileChecks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_files(path: Path, files: Any) -> None:
    """Check every file ``bundle.json`` lists is there with its size and SHA-256;
    :class:`BundleError` names the first that is not."""
    with FileChecks(path, files) as checks:
        checks.wait_all()


def load_bundle(path: Path | str) -> Bundle:
    """Load a bundle; :class:`BundleError` says what is wrong when it cannot be served."""
    path = Path(path)
    meta_path = path / "bundle.json"
    if not meta_path.exists():
        raise BundleError(f"{path} is not a model bundle (no bundle.json); pass a folder written by `recsys train`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BundleError(f"{meta_path} is not valid JSON ({exc}); re-export the bundle") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path} is not a JSON object; re-export the bundle")
    version = meta.get("format_version")
    if version not in READS:
        older = ", ".join(str(v) for v in READS if v != FORMAT_VERSION)
        raise BundleError(
            f"{path}: bundle format version {version!r}, this server reads version {FORMAT_VERSION} "
            f"(and {older}); retrain with this release (`recsys train`) or serve it with the release that wrote it"
        )
    import recsys.models  # noqa: F401  (registers every model)

    # bundles written before the list of files load without the check
    checks = FileChecks(path, meta["files"], first=LOAD_ORDER) if "files" in meta else None

    def part(name: str, read: Any, *files: str) -> Any:
        """``read()`` once ``files`` (default: ``name``) have matched their checksums."""
        if checks is not None:
            checks.wait(*(files or (name,)))
        try:
            return read()
        except (ModelStateVersionError, BundleError):
            raise
        except DECODE_ERRORS as exc:
            raise BundleError(
                f"{path}: bundle is incomplete or corrupt ({name}: {type(exc).__name__}: {exc}); re-export it"
            ) from None

    try:
        member_table = part("members.parquet", lambda: pq.read_table(path / "members.parquet"))
        product_table = part("products.parquet", lambda: pq.read_table(path / "products.parquet"))
        for name, table, col in (("members.parquet", member_table, Col.MEMBER),
                                 ("products.parquet", product_table, Col.PRODUCT)):
            if col not in table.column_names:
                raise BundleError(f"{path}: bundle is incomplete or corrupt ({name} has no {col} column); re-export it")
        # (ValueError: ids that are not unique)
        members = part("members.parquet", lambda: IdMap(member_table.column(Col.MEMBER)))
        products = part("products.parquet", lambda: IdMap(product_table.column(Col.PRODUCT)))
        model = part("model", lambda: Recommender.load(path / "model"))
        pre_ranked = part(_pre_ranked_name(meta), lambda: _load_pre_ranked(path, meta))
        tags = TagRegistry.from_json(meta["tags"], "bundle.json: tags") if "tags" in meta else None
        if tags is not None:
            _check_tag_columns(tags, member_table, product_table)
        indexes = part("indexes", lambda: _load_indexes(path, meta, model.n_members, model.n_products), INDEX_DIR)
        if checks is not None:
            checks.wait_all()  # files no reader opened are as bundle.json says too
    except ModelStateVersionError as exc:
        raise BundleError(str(exc)) from None
    except (ValueError, RecsysError) as exc:  # the tag registry and the tables disagree
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{path}: bundle is incomplete or corrupt ({exc}); re-export it") from None
    finally:
        if checks is not None:
            checks.close()
    if len(members) != model.n_members or len(products) != model.n_products:
        raise BundleError(
            f"{path}: id lists ({len(members)} members, {len(products)} products) do not match the model "
            f"({model.n_members}, {model.n_products}); re-export the bundle"
        )
    if pre_ranked is not None:
        try:
            pre_ranked.check(model.n_members, model.n_products)
        except ValueError as exc:
            raise BundleError(f"{path}: {exc}; re-export the bundle") from None
    return Bundle(model, members, products, member_table, product_table, meta, pre_ranked, tags, indexes)


def _check_tag_columns(tags: TagRegistry, member_table: pa.Table, product_table: pa.Table) -> None:
    """ValueError when a tag has no column in its table."""
    for entity, table in (("member", member_table), ("product", product_table)):
        missing = [t.name for t in tags.of(entity) if t.name not in table.column_names]  # type: ignore[arg-type]
        if missing:
            raise ValueError(f"{entity} tag(s) {', '.join(missing)} have no column in the {entity}s table")


def _pre_ranked_name(meta: dict[str, Any]) -> str:
    info = meta.get("pre_ranked")
    return str(info.get("file", PRE_RANKED_FILE)) if isinstance(info, dict) else PRE_RANKED_FILE


def _load_pre_ranked(path: Path, meta: dict[str, Any]) -> PreRanked | None:
    """The bundle's pre-ranked lists when ``bundle.json`` names them (OSError / ValueError when the
    file is missing or unreadable: the bundle is then incomplete)."""
    info = meta.get("pre_ranked")
    if not info:
        return None
    if not isinstance(info, dict):
        raise ValueError("bundle.json: 'pre_ranked' must be an object")
    return PreRanked.load(path / _pre_ranked_name(meta), info)


def write_indexes(path: Path, indexes: dict[str, AnnIndex]) -> dict[str, dict[str, Any]]:
    """Write ``indexes`` into the bundle folder ``path`` (``indexes/NAME.faiss``); returns what
    ``bundle.json`` says of them."""
    out: dict[str, dict[str, Any]] = {}
    for name, ann in indexes.items():
        if name not in INDEX_NAMES:
            raise ValueError(f"unknown index {name!r}; indexes: {', '.join(INDEX_NAMES)}")
        rel = f"{INDEX_DIR}/{name}.faiss"
        out[name] = {**save_index(ann, path / rel), "file": rel}
    return out


def add_indexes(path: Path | str, indexes: dict[str, AnnIndex]) -> dict[str, dict[str, Any]]:
    """Add (or replace) the indexes of an existing bundle folder: the files first, then
    ``bundle.json`` replaced in one rename, so a reader sees the old bundle or the new one."""
    path = Path(path)
    meta_path = path / "bundle.json"
    meta = json.loads(meta_path.read_text())
    for name, ann in indexes.items():
        _check_index(name, ann.meta, int(meta["n_members"]), int(meta["n_products"]))
    described = {**(meta.get("indexes") or {}), **write_indexes(path, indexes)}
    meta["indexes"] = described
    if "files" in meta:  # the list of files the loader verifies includes the new ones
        meta["files"] = file_manifest(path)
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    tmp.replace(meta_path)
    return described


def _check_index(name: str, meta: dict[str, Any], n_members: int, n_products: int) -> None:
    if name not in INDEX_NAMES:
        raise ValueError(f"unknown index {name!r}; indexes: {', '.join(INDEX_NAMES)}")
    want = n_members if name == "members" else n_products
    if int(meta.get("n", -1)) != want:
        raise ValueError(f"the {name} index holds {meta.get('n')} vectors; the model has {want}")


def _load_indexes(path: Path, meta: dict[str, Any], n_members: int, n_products: int) -> dict[str, AnnIndex]:
    """The bundle's indexes when ``bundle.json`` names them, memory-mapped (ValueError / OSError
    when one is missing, unreadable or does not fit the model: the bundle is then incomplete)."""
    info = meta.get("indexes")
    if not info:
        return {}
    if not isinstance(info, dict):
        raise ValueError("bundle.json: 'indexes' must be an object")
    out: dict[str, AnnIndex] = {}
    for name, desc in info.items():
        if not isinstance(desc, dict):
            raise ValueError(f"bundle.json: indexes.{name} must be an object")
        _check_index(name, desc, n_members, n_products)
        file = path / str(desc.get("file", f"{INDEX_DIR}/{name}.faiss"))
        if not file.is_file():
            raise OSError(f"{file.relative_to(path)} is missing")
        out[name] = load_index(file, desc)
    return out
