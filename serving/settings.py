"""Settings of the recommendation server, read from the environment (prefix ``RECSYS_``).

Exactly one model source: a local bundle folder (``RECSYS_BUNDLE``) or a registered model and an
alias (``RECSYS_REGISTERED_MODEL`` + ``RECSYS_ALIAS``, ``champion`` by default). Everything is
validated when the settings are built, so a bad value stops the server before it listens.

Examples
--------
>>> s = ServingSettings(bundle="bundles/latest", auth_disabled=True)
>>> s.max_k, s.max_audience
(100, 100000)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.ann import IndexSettings  # noqa: F401  (the index settings: how vectors are searched)

Role = Literal["app", "merchandiser", "admin", "staff"]
ScopeValues = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(min_length=1, max_length=1000)]


class ApiKeySpec(BaseModel):
    """One API key: a public id (what logs and the audit trail name), its role, the SHA-256 hex
    digest of the secret (``python -m serving.keys hash <secret>`` prints it) and optionally a
    ``scope``: member tag values (``{"store": ["S01"]}``, ``{"region": ["华东", "华南"]}``) that
    limit every member list, profile and pick the key gets to the members holding one of the values
    of each tag. A ``staff`` key (store staff, 导购) must have one."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100)
    role: Role
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scope: dict[Annotated[str, Field(min_length=1, max_length=64)], ScopeValues] | None = Field(None, max_length=20)

    @model_validator(mode="after")
    def _staff_is_scoped(self) -> ApiKeySpec:
        if self.scope is not None and not self.scope:
            raise ValueError(f"key {self.id!r}: an empty scope would select nobody; drop it or name tag values")
        if self.role == "staff" and not self.scope:
            raise ValueError(
                f"key {self.id!r}: a staff key needs a scope, the members it serves, e.g. scope = {{ store = [\"S01\"] }}"
            )
        return self


class ServerSettings(BaseModel):
    """How uvicorn treats connections (``RECSYS_SERVER__<NAME>``; see :mod:`serving.protocol`)."""

    model_config = ConfigDict(extra="forbid")

    keep_alive_seconds: float = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this
    # a request's headers must be complete this long after its first byte (or after the
    # connection opened): a client trickling them is disconnected
    header_timeout_seconds: float = Field(10.0, gt=0)
    max_header_bytes: int = Field(16_384, ge=1_024)  # request line + headers; more is a 400
    # connections + requests in progress; past it new requests are answered 503 at once
    limit_concurrency: int = Field(1_000, ge=1)
    backlog: int = Field(2_048, ge=1)  # connections the OS queues before they are accepted
    graceful_shutdown_seconds: float = Field(30.0, ge=0)  # on SIGTERM, wait this long for requests


class ServingSettings(BaseSettings):
    """Everything the server needs to start; see the module docstring for the model source."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_", env_nested_delimiter="__", extra="ignore")

    # ---- model source
    bundle: Path | None = None
    registered_model: str | None = None
    alias: str = "champion"
    mlflow_tracking_uri: str | None = None
    # registry downloads: cached by version here and reused (default: a temporary folder per load,
    # removed once the model is in memory)
    bundle_cache_dir: Path | None = None
    bundle_cache_keep: int = Field(3, ge=1)  # cached versions kept (most recently used)
    # folders `POST /v1/admin/reload {"bundle": ...}` may load from (RECSYS_BUNDLE_ROOTS, a JSON
    # list); empty: the folder holding RECSYS_BUNDLE, and no folder at all for a registry model
    bundle_roots: list[Path] = []

    # ---- access
    api_keys_file: Path | None = None  # TOML or JSON: {"keys": [{id, role, sha256}, ...]}
    api_keys: list[ApiKeySpec] | None = None  # RECSYS_API_KEYS as a JSON list
    auth_disabled: bool = False  # development only: every request acts as admin

    # ---- files written by the server
    events_dir: Path = Path("events")
    # the audit trail is the audit_entries table of campaign_db (serving.audit); a JSON-lines file
    # named here (RECSYS_AUDIT_LOG, --audit-log: older versions) is refused, saying so
    audit_log: Path | None = None
    events_poll_seconds: float = Field(1.0, ge=0.0)  # 0: never tail other workers' events

    # ---- live events shared by several replicas: a Redis Stream instead of the events file
    events_stream: str | None = None  # redis://host:6379/0 (also rediss://, unix://); None: events_dir
    events_stream_key: str = Field("recsys:events", min_length=1, max_length=200)
    events_stream_timeout_seconds: float = Field(2.0, gt=0.0, le=60.0)
    # how often a replica refreshes its record of what it serves in the events store (serving.replicas;
    # `recsys events trim --stale-after` ignores a record not refreshed for longer); 0: only at loads
    events_replica_heartbeat_seconds: float = Field(30.0, ge=0.0)
    # a purchase time is plausible from this many days before the model's data ends ...
    events_max_days_before_as_of: int = Field(366, ge=0, le=36_500)
    # ... to this long after now (clock skew between tills and the server)
    events_max_seconds_ahead: float = Field(86_400.0, ge=0.0, le=31_536_000.0)

    # ---- campaigns (serving.db): the database every replica shares, and what results are measured on
    campaign_db: str = "sqlite:///campaigns/campaigns.db"  # or postgresql+psycopg://user@host:5432/db
    campaign_purchases: Path | None = None  # the canonical folder (transactions.parquet) of `recsys data ingest`
    contact_max_campaigns: int = Field(3, ge=1, le=1000)  # frequency cap: at most this many campaigns ...
    contact_days: int = Field(30, ge=1, le=3650)  # ... whose send dates are within this many days

    # ---- limits
    # request bodies: larger is a 413, decided from Content-Length before reading (or while a
    # chunked body streams in); a body still arriving after body_timeout_seconds is a 408
    max_body_bytes: int = Field(1_048_576, ge=1_024)
    # the body limit of the routes that take a whole member list (suppression lists, an imported
    # campaign's recipients and holdout): ~14 bytes per id, so 64 MB is ~4.5M ids
    max_upload_bytes: int = Field(67_108_864, ge=1_024)
    body_timeout_seconds: float = Field(30.0, gt=0)
    server: ServerSettings = ServerSettings()
    max_k: int = Field(100, ge=1, le=10_000)
    max_audience: int = Field(100_000, ge=1)
    max_batch: int = Field(1_000, ge=1)
    max_events: int = Field(1_000, ge=1)

    # ---- engine
    index: IndexSettings = IndexSettings()
    # answer picks from the bundle's pre-ranked lists when it has them (False: always score live)
    use_pre_ranked: bool = True
    blas_threads: int = Field(1, ge=1)
    load_in_background: bool = True  # listen (live, not ready) while a large bundle loads

    @model_validator(mode="after")
    def _one_source(self) -> ServingSettings:
        if self.bundle is not None and self.registered_model:
            raise ValueError(
                "set either RECSYS_BUNDLE (a bundle folder) or RECSYS_REGISTERED_MODEL (+ RECSYS_ALIAS), not both"
            )
        if self.bundle is None and not self.registered_model:
            raise ValueError(
                "no model to serve: set RECSYS_BUNDLE to a bundle folder or RECSYS_REGISTERED_MODEL "
                "to a registered model name (RECSYS_ALIAS picks the version, 'champion' by default)"
            )
        return self

    @model_validator(mode="after")
    def _no_audit_file(self) -> ServingSettings:
        if self.audit_log is not None:
            raise ValueError(
                f"RECSYS_AUDIT_LOG / --audit-log ({self.audit_log}) is no longer used: the audit trail is the "
                "audit_entries table of the campaign database (RECSYS_CAMPAIGN_DB / --campaign-db), shared by "
                "every replica; unset it, and bring the old file in with `recsys audit import FILE`"
            )
        return self

    @model_validator(mode="after")
    def _stream_url(self) -> ServingSettings:
        from serving.events import STREAM_SCHEMES, is_stream_url, redact

        if self.events_stream is not None and not is_stream_url(self.events_stream):
            raise ValueError(
                f"RECSYS_EVENTS_STREAM {redact(self.events_stream)!r} is not a Redis URL: use "
                f"{' / '.join(s + '://' for s in STREAM_SCHEMES)} (e.g. redis://127.0.0.1:6379/0), or leave it "
                "unset for the local events folder"
            )
        return self

    def reload_roots(self) -> list[Path]:
        """The folders a reload may name a bundle in (see ``bundle_roots``), resolved."""
        roots = self.bundle_roots or ([self.bundle.resolve().parent] if self.bundle is not None else [])
        return [Path(r).resolve() for r in roots]

    @property
    def events_file(self) -> Path:
        """The append-only JSON-lines file of live purchase events (see :mod:`serving.events`)."""
        return self.events_dir / "events.jsonl"
