"""Column mapping: how a retailer's export maps onto the canonical tables, read from TOML.

A mapping names, for each canonical column (:mod:`recsys.columns`), the source column that holds
it, so a new retailer's export is ingested by writing a TOML file, not code. The packaged
``sources/tafeng.toml`` is the worked example; ``sources/example_retailer.toml`` is a commented
template for a retailer's own export with product, member and channel-identity tables, and
``sources/synth_retailer.toml`` maps the synthetic retailer export (``recsys data synth --raw``).

Shape::

    name = "tafeng"                     # dataset folder name under the data dir
    [transactions]
    path = "raw/ta_feng.csv.zip"        # relative to the data dir; csv, csv.gz, zip, parquet
    ts_format = "%m/%d/%Y"              # optional strptime format (default: ISO)
    [transactions.columns]              # canonical name = source column name
    member_id = "CUSTOMER_ID"
    ...
    [products]                          # optional, same shape
    [members]                           # optional
    [identities]                        # optional: channel, external_id, member_id
    [limits]                            # optional: what a plausible line is (see Limits)
"""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from recsys.errors import InputError
from recsys.schemas import TABLES, TableSchema

# Built-in datasets: name -> packaged mapping file under recsys/data/sources/. synth_retailer is
# the raw export `recsys data synth --raw` writes (a second schema, unlike Ta-Feng's).
BUILTIN_SOURCES: dict[str, str] = {
    "tafeng": "tafeng.toml",
    "synth_retailer": "synth_retailer.toml",
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TableMapping(BaseModel):
    """Where one source table lives and which of its columns feed which canonical column.

    Attributes
    ----------
    path
        The file: ``.csv`` (any delimiter, optionally ``.gz``/``.zst`` compressed), a ``.zip``
        holding a single CSV, or ``.parquet``. Relative paths resolve against the data dir.
    columns
        ``canonical name -> source column name``; source names match case-insensitively.
    ts_format
        strptime format for the table's timestamp columns (e.g. ``"%m/%d/%Y"``); when omitted,
        ISO 8601 dates / timestamps are expected.
    delimiter
        CSV field separator; sniffed from the file when omitted.
    encoding
        CSV text encoding (``utf-8``, ``latin-1`` or ``utf-16``); default UTF-8 (a BOM is fine).
    format
        ``"csv"`` or ``"parquet"``; inferred from the file name when omitted.
    """

    model_config = ConfigDict(extra="forbid")

    path: Path
    columns: dict[str, str]
    ts_format: str | None = None
    delimiter: str | None = None
    encoding: str | None = None
    format: Literal["csv", "parquet"] | None = None

    @field_validator("columns")
    @classmethod
    def _non_empty_names(cls, v: dict[str, str]) -> dict[str, str]:
        for canonical, source in v.items():
            if not source.strip():
                raise ValueError(f"source column for {canonical!r} is empty")
        return v

    @property
    def file_format(self) -> Literal["csv", "parquet"]:
        """The reader to use: the explicit ``format`` or the one the file name implies."""
        if self.format:
            return self.format
        return "parquet" if self.path.suffix.lower() in {".parquet", ".pq"} else "csv"


DEFAULT_TS_MIN = datetime(1990, 1, 1)
DEFAULT_MAX_QUANTITY = 10_000.0


class Limits(BaseModel):
    """What a plausible purchase line is; lines outside are rejected and counted by reason.

    Attributes
    ----------
    ts_min, ts_max
        A line's timestamp must be in ``[ts_min, ts_max)`` (UTC, as written in the file), else
        it is rejected as ``ts_out_of_range``: a two-digit year read by ``%Y`` (``11/1/00`` is
        year 0), 1900 or 2099 placeholders. Member join dates and product launch dates outside
        the window are cleared and counted like unparseable ones. Defaults: 1990-01-01 and the
        time of the run plus one day. TOML dates (``1995-01-01``), date-times or ISO text.
    max_quantity
        A line with more units than this is rejected as ``implausible_quantity`` (default
        10,000; Ta-Feng's largest line is 1,200 units).
    """

    model_config = ConfigDict(extra="forbid")

    ts_min: datetime = DEFAULT_TS_MIN
    ts_max: datetime | None = None
    max_quantity: float = Field(DEFAULT_MAX_QUANTITY, gt=0, allow_inf_nan=False)

    @field_validator("ts_min", "ts_max", mode="before")
    @classmethod
    def _dates_are_midnight(cls, v: object) -> object:
        if isinstance(v, date) and not isinstance(v, datetime):
            return datetime(v.year, v.month, v.day)
        return v

    @field_validator("ts_min", "ts_max")
    @classmethod
    def _naive_utc(cls, v: datetime | None) -> datetime | None:
        # Timestamps are compared as written (DuckDB runs in UTC); an offset is converted.
        if v is not None and v.tzinfo is not None:
            v = v.astimezone(UTC).replace(tzinfo=None)
        return v

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        if self.ts_max is not None and self.ts_min >= self.ts_max:
            raise ValueError(f"ts_min {self.ts_min.isoformat()} must be before ts_max "
                             f"{self.ts_max.isoformat()}")
        return self

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """``(ts_min, ts_max)``, with the default ts_max (``now`` + 1 day, UTC) filled in."""
        if self.ts_max is not None:
            return self.ts_min, self.ts_max
        now = now or datetime.now(UTC).replace(tzinfo=None)
        return self.ts_min, max(now + timedelta(days=1), self.ts_min + timedelta(days=1))


class MappingConfig(BaseModel):
    """A dataset: its name and the mapping of each of its source tables.

    Examples
    --------
    >>> cfg = MappingConfig.model_validate({
    ...     "name": "shop",
    ...     "transactions": {"path": "sales.csv", "columns": {
    ...         "member_id": "card", "product_id": "sku", "ts": "date",
    ...         "quantity": "qty", "amount": "paid"}}})
    >>> cfg.transactions.columns["member_id"]
    'card'
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    transactions: TableMapping
    products: TableMapping | None = None
    members: TableMapping | None = None
    identities: TableMapping | None = None
    limits: Limits = Field(default_factory=Limits)
    # A product without a brand takes the first N characters of its id when the id is a retail
    # barcode (EAN-13 / GS1: 12 characters or more), whose leading digits name the maker: a brand a
    # merchandiser can name (and filter and describe a new product by) for data with no brand column.
    brand_from_id_prefix: int | None = Field(default=None, ge=1, le=20)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        # The name becomes a folder under the data dir: no separators, no "..".
        if not _NAME_RE.match(v) or ".." in v:
            raise ValueError(f"{v!r} is not usable as a folder name (letters, digits, _ . -)")
        return v

    @model_validator(mode="after")
    def _known_and_required_columns(self) -> MappingConfig:
        for table, tm in self.tables().items():
            _check_columns(table, tm, TABLES[table])
        return self

    def tables(self) -> dict[str, TableMapping]:
        """The tables present in this mapping, by canonical table name."""
        found = {
            "transactions": self.transactions,
            "products": self.products,
            "members": self.members,
            "identities": self.identities,
        }
        return {k: v for k, v in found.items() if v is not None}

    def resolved(self, data_dir: Path) -> MappingConfig:
        """A copy whose relative table paths are made absolute against ``data_dir``."""
        base = Path(data_dir).expanduser().resolve()
        update = {
            table: tm.model_copy(update={"path": tm.path if tm.path.is_absolute() else base / tm.path})
            for table, tm in self.tables().items()
        }
        return self.model_copy(update=update)

    @classmethod
    def from_toml(cls, path: Path) -> MappingConfig:
        """Read and validate a mapping file; every problem becomes a one-line :class:`InputError`."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"mapping file not found: {path} (give a built-in dataset name "
                             f"({', '.join(BUILTIN_SOURCES)}) or the path of a TOML mapping)")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(raw, origin=str(path))

    @classmethod
    def from_dict(cls, raw: dict, origin: str = "mapping") -> MappingConfig:
        """Validate a parsed mapping; ``origin`` names it in error messages."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            msg = first["msg"].removeprefix("Value error, ")
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise InputError(f"{origin}: {where + ': ' if where else ''}{msg}{more}") from None


def _check_columns(table: str, tm: TableMapping, schema: TableSchema) -> None:
    unknown = sorted(set(tm.columns) - set(schema.columns))
    if unknown:
        raise ValueError(
            f"{table}.columns: unknown canonical column {unknown[0]!r}; "
            f"{table} columns are: {', '.join(schema.columns)}"
        )
    missing = [c for c in schema.required if c not in tm.columns]
    if missing:
        raise ValueError(
            f"{table}.columns: required column {missing[0]!r} is not mapped "
            f"(add {missing[0]} = \"<source column>\"; required: {', '.join(schema.required)})"
        )


def resolve_source(source: str, data_dir: Path) -> MappingConfig:
    """The mapping for a built-in dataset name or a TOML file, with paths resolved.

    Parameters
    ----------
    source
        A built-in dataset name (``"tafeng"``) or the path of a mapping TOML file.
    data_dir
        Root data folder; relative table paths in the mapping resolve against it.

    Returns
    -------
    MappingConfig
        Validated, with absolute table paths.

    Raises
    ------
    InputError
        Unknown name, missing file, or an invalid mapping.
    """
    if source in BUILTIN_SOURCES:
        text = resources.files("recsys.data").joinpath("sources", BUILTIN_SOURCES[source]).read_text(
            encoding="utf-8"
        )
        cfg = MappingConfig.from_dict(tomllib.loads(text), origin=f"built-in mapping {source!r}")
    else:
        path = Path(source).expanduser()
        if not path.is_file() and path.suffix.lower() != ".toml":
            raise InputError(
                f"unknown source {source!r}: not a built-in dataset "
                f"({', '.join(BUILTIN_SOURCES)}) and no such mapping file"
            )
        cfg = MappingConfig.from_toml(path)
    return cfg.resolved(data_dir)
