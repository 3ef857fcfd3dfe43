"""Request and response bodies of the campaign API (``/v1/campaigns``, ``/v1/suppressions``)."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.schemas import Mode, ProductAttributes, TagFilters

Group = Literal["treated", "holdout"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PicksTarget(Strict):
    """A 以人找物 push (member day, holiday): every member gets their top ``k`` picks."""

    k: int = Field(5, ge=1, le=20, description="Picks per member")
    mode: Mode = Field("discover", description="discover: only products the member never bought")
    category: list[str] | None = Field(None, max_length=200, description="Only products of these categories")
    exclude: list[str] | None = Field(None, max_length=10_000, description="Never these product ids")


class Arms(Strict):
    """Two registered model versions, each given half of the treated members at random."""

    challenger: str = Field(min_length=1, max_length=100,
                            description="Registry alias or version of the challenger (the champion is the served model)")


class CampaignRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    product_id: str | None = Field(None, min_length=1, max_length=200, description="以物找人: a product sold")
    attributes: ProductAttributes | None = Field(None, description="以物找人: a product not yet sold")
    picks: PicksTarget | None = Field(None, description="以人找物: each member gets their top picks")
    filters: TagFilters = Field(default_factory=dict, description="Member tag (rule tags too) -> values to keep")
    size: int | None = Field(None, ge=1, le=10_000_000, description="Members to contact plus hold out; null: everyone matching")
    holdout_share: float = Field(0.1, gt=0.0, le=0.5, description="Share held out at random, in (0, 0.5]")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Seed of the holdout draw (recorded; random if null)")
    send_date: date | None = Field(None, description="When the campaign goes out (default today)")
    window_days: int = Field(30, ge=1, le=365, description="Purchases are measured from the send date for this many days")
    exclude_bought_within_days: int | None = Field(None, ge=0, le=3650)
    arms: Arms | None = Field(None, description="A/B test of two model versions (picks campaigns)")
    cost_per_contact: float | None = Field(None, ge=0, lt=1e6)
    margin: float | None = Field(None, ge=0, le=1, description="Gross margin on the campaign's sales, 0-1")

    @model_validator(mode="after")
    def _one_target(self) -> CampaignRequest:
        given = [n for n in ("product_id", "attributes", "picks") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one target: product_id, attributes (a product not yet sold) or picks")
        if self.arms is not None and self.picks is None:
            raise ValueError("arms (an A/B test of two models) are for picks campaigns, where each arm's model picks "
                             "the products; an audience campaign targets one product")
        return self


class ImportRequest(Strict):
    """A campaign another tool sent, to be measured the same way."""

    name: str = Field(min_length=1, max_length=200)
    recipients_csv: str = Field(min_length=1, max_length=50_000_000, description="CSV of member ids (first column; "
                                "a header row member_id is skipped)")
    holdout_csv: str | None = Field(None, max_length=50_000_000, description="CSV of held-out member ids; without "
                                    "it a comparison group is matched on value segment and lifecycle (observational)")
    product_ids: list[str] | None = Field(None, max_length=10_000)
    category: str | None = Field(None, min_length=1, max_length=200)
    brand: str | None = Field(None, min_length=1, max_length=200)
    send_date: date
    window_days: int = Field(30, ge=1, le=365)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    cost_per_contact: float | None = Field(None, ge=0, lt=1e6)
    margin: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _target(self) -> ImportRequest:
        if not (self.product_ids or self.category or self.brand):
            raise ValueError("name what the campaign sold: product_ids, a category or a brand")
        return self


class CampaignSummary(BaseModel):
    id: int
    name: str
    kind: str
    status: str = Field(description="scheduled (before the send date), measuring (window open), closed")
    created_at: str
    created_by: str
    send_date: date
    window_end: date
    window_days: int
    model_version: str | None
    data_as_of: date | None
    seed: int
    holdout_share: float
    target: dict[str, Any]
    filters: dict[str, Any]
    size: int | None
    eligible: int
    treated: int
    holdout: int
    arms: dict[str, int] | None = None
    observational: bool = False
    policy: dict[str, Any] = Field(description="How many members each contact-policy rule removed")
    lineage: dict[str, Any]
    exports: int
    notes: list[str] = []


class CampaignList(BaseModel):
    campaigns: list[CampaignSummary]


class SuppressionSummary(BaseModel):
    id: int
    name: str
    channel: str | None
    created_at: str
    created_by: str
    rows: int
    members: int = Field(description="Member ids kept (known to the served model)")
    unknown: int = Field(description="Ids the served model does not know: counted, not kept")
    duplicates: int
    invalid: int


class SuppressionListResponse(BaseModel):
    lists: list[SuppressionSummary]
    suppressed_members: int
