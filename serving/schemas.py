"""Request and response bodies of the HTTP API (pydantic; unknown fields in a request are a 422).

Static limits are enforced here with ``Field`` constraints; limits from the settings and values
that depend on the loaded bundle (tag values, categories) are checked in :mod:`serving.service`,
whose errors also answer 422 and list what is allowed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Mode = Literal["discover", "replenish"]
ReasonCode = Literal["often_buys", "also_bought", "popular_in_segment", "popular"]
FallbackReason = Literal["unknown_member", "new_member"]
# Member tags to keep, by name: any member tag of the served bundle (GET /v1/tags lists them) -> the
# values to keep: OR within a tag, AND across tags; an empty list keeps nobody. Names and values are
# checked against the bundle (an unknown one is a 422 listing what exists).
TagFilters = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=64)],
        Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=1000)],
    ],
    Field(max_length=50),
]

ID = Field(min_length=1, max_length=200)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- picks
class Pick(BaseModel):
    product_id: str
    score: float
    reason: str = Field(description="What a store clerk can say, in Chinese, e.g. 您经常购买「鲜牛奶」")
    reason_en: str
    reason_code: ReasonCode
    anchor_product_id: str | None = Field(None, description="For also_bought: the product the member bought")
    category: str | None = None
    name: str | None = None


class PicksQuery(BaseModel):
    """The query parameters of ``GET /v1/members/{member_id}/picks``: validated with this model
    and documented from it (see :mod:`serving.routers.picks`)."""

    model_config = ConfigDict(extra="ignore")

    k: int = Field(10, ge=1, le=10_000, description="Number of picks, at most max_k (100)")
    mode: Mode = Field("replenish", description="discover: only products the member never bought")
    category: list[str] | None = Field(None, description="Only these categories (repeat or comma-separate)")
    exclude: list[str] | None = Field(None, description="Never these product ids (repeat or comma-separate)")
    segment: str | None = Field(
        None, max_length=100, description="value_segment to use for an unknown member's fallback"
    )


class PicksResponse(BaseModel):
    member_id: str
    model_version: str
    fallback: bool
    fallback_reason: FallbackReason | None = None
    picks: list[Pick]


class BatchPicksRequest(Strict):
    member_ids: list[str] = Field(min_length=1, description="At most max_batch (1,000 by default) members")
    k: int = Field(10, ge=1, description="Picks per member, at most max_k (100 by default)")
    mode: Mode = "replenish"
    category: list[str] | None = Field(None, description="Only products of these categories")
    exclude: list[str] | None = Field(None, description="Never these product ids")
    segment: str | None = Field(None, description="value_segment of unknown members, for their fallback")


class BatchPicksResponse(BaseModel):
    model_version: str
    results: list[PicksResponse]


# --------------------------------------------------------------------------- similar
class SimilarProduct(BaseModel):
    product_id: str
    score: float
    category: str | None = None
    name: str | None = None


class SimilarResponse(BaseModel):
    product_id: str
    model_version: str
    similar: list[SimilarProduct]


# --------------------------------------------------------------------------- audiences
class ProductAttributes(Strict):
    """A product not yet sold, described by the attributes merchandisers know."""

    category: str = Field(min_length=1, max_length=200)
    price: float | None = Field(None, gt=0, lt=1e9)
    brand: str | None = Field(None, min_length=1, max_length=200)


class AudienceRequest(Strict):
    product_id: str | None = Field(None, min_length=1, max_length=200)
    attributes: ProductAttributes | None = None
    size: int = Field(1000, ge=1, description="Members to return, at most max_audience (100,000 by default)")
    filters: TagFilters = Field(
        default_factory=dict, description="Member tag -> values to keep (OR within a tag, AND across tags)"
    )
    exclude_bought_within_days: int | None = Field(
        None, ge=0, le=3650, description="Leave out members who bought the product within this many days"
    )

    @model_validator(mode="after")
    def _one_target(self) -> AudienceRequest:
        if (self.product_id is None) == (self.attributes is None):
            raise ValueError("give exactly one of product_id (a product we sell) or attributes (a product not yet sold)")
        return self


class AudienceMember(BaseModel):
    member_id: str
    score: float = Field(description="The model's ranking score (not a probability; the CSV export carries it too)")
    probability: float | None = Field(
        None, description="Calibrated probability that the member buys the product, when the model provides one"
    )


class AudienceBaseline(BaseModel):
    """Another way to pick the same number of members, among those the filters keep."""

    size: int
    expected_buyers: float


class AudienceProfile(BaseModel):
    size: int
    counts: dict[str, dict[str, int]] = Field(description="Per member tag: members of the audience per value")
    expected_buyers: float | None = Field(
        None, description="Sum of calibrated purchase probabilities, when the model provides them"
    )
    eligible: int | None = Field(
        None, description="Members the filters (and exclusions) keep: the pool the audience and baselines come from"
    )
    random: AudienceBaseline | None = Field(
        None, description="The same number of members drawn at random from the pool: size x the pool's mean "
        "purchase probability (when the model provides probabilities)"
    )
    most_active: AudienceBaseline | None = Field(
        None, description="The same number of the pool's most active members (most purchase occasions; ties by "
        "member order) and their expected buyers (when the model provides probabilities)"
    )
    lift_vs_random: float | None = Field(None, description="expected_buyers / random.expected_buyers")
    lift_vs_most_active: float | None = Field(None, description="expected_buyers / most_active.expected_buyers")


class AudienceResponse(BaseModel):
    model_version: str
    product_id: str | None
    reference_products: list[str] = Field(
        description="The products the audience was scored from: the product itself; for a product not yet "
        "sold, none when the model scores it from its attributes (its never-sold audience model, as the report "
        "measures), else the reference products of its category (the notes say which)"
    )
    members: list[AudienceMember]
    profile: AudienceProfile
    notes: list[str] = []


class TagValueInfo(BaseModel):
    value: str
    zh: str
    en: str
    members: int | None = Field(None, description="Members holding it (in the key's scope); options only")


class TagInfo(BaseModel):
    """One tag of the served bundle, from its registry (:mod:`recsys.tags`)."""

    name: str = Field(description="What filters and profiles call it")
    entity: Literal["member", "product"]
    zh: str
    en: str
    multi: bool = Field(description="A member may hold several values (and matches a filter on any of them)")
    open: bool = Field(description="Values come from the retailer's data (regions, stores) rather than a fixed list")
    kind: str = Field(description="builtin, or where else the tag was defined (e.g. rule)")
    description: str
    values: list[TagValueInfo] = Field(description="Its values in display order, with their labels")


class TagsResponse(BaseModel):
    model_version: str
    tags: list[TagInfo] = Field(description="Member tags, then product tags, in registry order")


class AudienceOptions(BaseModel):
    """What an audience request may name in this bundle: member tags, categories and brands."""

    model_version: str
    tags: list[TagInfo] = Field(description="Every member tag in the bundle, with its values, labels and members")
    categories: list[str]
    brands: list[str]
    max_audience: int
    scope: dict[str, list[str]] | None = Field(None, description="The key's scope, when it has one")


class ExportRecord(BaseModel):
    """One audience from the audit trail (no member data): a JSON answer or a CSV export."""

    time: str | None = None
    key_id: str | None = None
    route: str | None = Field(None, description="/v1/audiences (JSON) or /v1/audiences/export (CSV)")
    format: str | None = Field(None, description="json or csv (entries before this field: csv)")
    product_id: str | None = None
    attributes: dict[str, object] | None = None
    filters: dict[str, list[str]] | None = None
    scope: dict[str, list[str]] | None = None
    exclude_bought_within_days: int | None = None
    size: int | None = None
    rows: int | None = None
    model_version: str | None = None
    origin: str | None = Field(None, description="The server process that answered (host:pid)")


class ExportsResponse(BaseModel):
    exports: list[ExportRecord] = Field(description="Newest first")


# --------------------------------------------------------------------------- products
class ProductInfo(BaseModel):
    product_id: str
    name: str | None = None
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    active: bool
    buyers: int = Field(description="Members who bought it in the model's history")


class ProductSearchResponse(BaseModel):
    model_version: str
    total: int = Field(description="Matches in all; at most `limit` are listed, most bought first")
    products: list[ProductInfo]


# --------------------------------------------------------------------------- member profile
class CategoryShare(BaseModel):
    category: str
    purchases: float = Field(description="Purchase occasions of the category's products")


class LastPurchase(BaseModel):
    product_id: str
    name: str | None = None
    category: str | None = None
    date: str | None = Field(None, description="ISO date, when purchase dates are known")
    days_ago: int | None = Field(None, description="Days from the purchase to counted_from")
    counted_from: str | None = Field(
        None, description="The day days_ago counts from: the date the model's data ends (as of), or today for a "
        "purchase received live since"
    )


class MemberProfile(BaseModel):
    member_id: str
    model_version: str
    known: bool = Field(description="Whether the member is in the model (bundle or live events)")
    tags: dict[str, str | list[str] | None] = Field(
        description="The member's tags by name (GET /v1/tags for labels): a value, a list for a multi-valued "
        "tag such as channel, or null when unknown"
    )
    purchases: float = Field(description="Purchase occasions (bundle history + live events)")
    products_bought: int
    top_categories: list[CategoryShare]
    last_purchase: LastPurchase | None = None
    as_of: str | None = Field(None, description="The date the model's data ends (its history is before it)")


# --------------------------------------------------------------------------- events
def printable(value: str | None) -> str | None:
    """Text a person can read back: no control, format (e.g. U+202E) or line-break characters and
    no leading or trailing white space (what :meth:`str.isprintable` and :meth:`str.strip` say)."""
    if value is not None and (not value.isprintable() or value != value.strip()):
        raise ValueError("must be printable text without control, format or line-break characters and without "
                         "leading or trailing spaces")
    return value


class PurchaseEvent(Strict):
    """One purchase line. ``member_id``, ``product_id`` and ``channel`` must be printable text;
    ``ts`` must fall in the server's window (by default from 366 days before the model's data ends
    to one day after now)."""

    event_id: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[!-~]+$",
        description="Your id for this purchase line (visible ASCII, no spaces). A retry with the same id is "
        "acknowledged and applied once, whichever replica receives it. Default: <Idempotency-Key>/<position> "
        "when the request has that header, else a new random id",
    )
    member_id: str = Field(min_length=1, max_length=200, description="Printable text")
    product_id: str = Field(min_length=1, max_length=200, description="Printable text")
    ts: datetime | None = Field(None, description="When it was bought (ISO 8601; default: now; naive = UTC)")
    quantity: float = Field(1.0, gt=0, lt=1e6)
    amount: float | None = Field(None, ge=0, lt=1e9)
    channel: str | None = Field(None, max_length=50, description="Printable text")

    _printable = field_validator("member_id", "product_id", "channel")(printable)

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("is outside the years a purchase can have") from None


class EventsResponse(BaseModel):
    accepted: int = Field(description="Events acknowledged: recorded now, or recorded by an earlier try")
    recorded: int = Field(description="Events written to the events store by this request")
    duplicates: int = Field(description="Events whose event_id was already recorded: acknowledged, not applied again")
    applied: int = Field(description="Events this server applied while answering (its own and other replicas')")
    new_members: list[str]
    event_ids: list[str] = Field(description="Each event's id, in request order (given, derived or new)")
    model_version: str


# --------------------------------------------------------------------------- operations
class ModelResponse(BaseModel):
    model_version: str
    model: str
    run_id: str | None
    trained_on: str | None
    saved_at: str | None
    metrics: dict[str, object]
    source: str
    registered_model: str | None
    registry_version: str | None
    loaded_at: str
    n_members: int
    n_products: int
    live_members_added: int
    events_applied: int
    events: dict[str, object] = Field(
        default_factory=dict, description="The live-events store (file or Redis stream), its last error, and "
        "counts: applied, duplicates skipped, unparsable entries skipped, events for products of other bundles; "
        "the bundle's events watermark (earlier events are in its data) and the log's last trim"
    )
    scorer: dict[str, object]
    pre_ranked: dict[str, object] | None = Field(
        None, description="The bundle's pre-ranked pick lists (length, modes, members scored live since a "
        "live purchase), or null when every pick is scored live"
    )


class WhoAmI(BaseModel):
    key_id: str
    role: str
    permissions: list[str]
    scope: dict[str, list[str]] | None = Field(None, description="Member tag values the key is limited to")


class ReloadRequest(Strict):
    bundle: str | None = Field(None, min_length=1, max_length=4096, description="A bundle folder on the server")
    alias: str | None = Field(
        None, min_length=1, max_length=200, description="A registry alias or version of the configured model"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ReloadRequest:
        if self.bundle is not None and self.alias is not None:
            raise ValueError("give a bundle path or a registry alias, not both")
        return self


class ReloadResponse(BaseModel):
    previous_version: str | None
    model_version: str
    seconds: float


class ErrorResponse(BaseModel):
    detail: str
