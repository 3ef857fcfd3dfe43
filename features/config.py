"""Tag thresholds for the member and product features.

All thresholds live in :class:`FeatureConfig` so that marketing can tune them per retailer in a
TOML file (``recsys features build --config tags.toml``) without touching the SQL; the values
used are written into every snapshot's manifest. The tags themselves -- names, labels, values and
their SQL -- are declared in :mod:`recsys.tags`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recsys.errors import InputError


class FeatureConfig(BaseModel):
    """Thresholds of the member and product tags.

    Every day count is measured between calendar dates: a purchase at any time on 2001-01-02 is
    30 days before an as-of date of 2001-02-01.

    Parameters
    ----------
    rfm_high_score
        R, F and M scores run from 1 to 5 (quintiles over the members who bought before the
        as-of date); a score ``>= rfm_high_score`` counts as "high" in the eight-segment model.
    new_days
        Lifecycle ``new`` when the first purchase is fewer than ``new_days`` days before the
        as-of date (``tenure_days < new_days``; 29 days is new, 30 is not). ``new`` wins over
        the recency-based stages.
    sleeping_days
        Otherwise ``active`` when ``recency_days < sleeping_days``; ``sleeping`` from
        ``sleeping_days`` on, i.e. a last purchase exactly 60 days ago is already sleeping
        ("no purchase in 60 days").
    lost_days
        ``sleeping`` while ``recency_days < lost_days``; ``lost`` when
        ``recency_days >= lost_days`` (exactly 90 days ago is lost). Members without any
        purchase before the as-of date are ``prospect``.
    band_quantiles
        Within each category, the unit prices of the lines before the as-of date are cut at
        these two quantiles (linear interpolation, like ``PERCENTILE_CONT``). A line is
        ``low`` below the first, ``high`` above the second, ``mid`` otherwise (boundaries
        included in ``mid``).
    high_end_share, price_sensitive_share
        A member is ``high_end`` when the share of their priced lines in the ``high`` band is
        at least ``high_end_share``, ``price_sensitive`` when the share in the ``low`` band is
        at least ``price_sensitive_share``. When both hold the larger share wins; an exact tie
        is ``mainstream`` (neither end dominates). Otherwise ``mainstream``.
    min_lines_for_price
        Fewer priced lines than this gives ``unknown`` price sensitivity.
    top_categories
        Length of each member's ``top_categories`` list (by number of lines, ties broken by
        the category id in ascending order).
    new_product_days
        A product is new when its first sale, or its ``launched_at``, is on or after
        ``as_of - new_product_days`` days (both ends inclusive: exactly 30 days ago is new).

    Examples
    --------
    >>> FeatureConfig(sleeping_days=45).lost_days
    90
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rfm_high_score: int = Field(3, ge=1, le=5)
    new_days: int = Field(30, ge=0)
    sleeping_days: int = Field(60, ge=1)
    lost_days: int = Field(90, ge=1)
    band_quantiles: tuple[float, float] = (1 / 3, 2 / 3)
    high_end_share: float = Field(0.5, gt=0, le=1)
    price_sensitive_share: float = Field(0.5, gt=0, le=1)
    min_lines_for_price: int = Field(3, ge=1)
    top_categories: int = Field(3, ge=1)
    new_product_days: int = Field(30, ge=0)

    @model_validator(mode="after")
    def _check_order(self) -> FeatureConfig:
        if not self.sleeping_days < self.lost_days:
            raise ValueError(
                f"sleeping_days ({self.sleeping_days}) must be smaller than lost_days ({self.lost_days})"
            )
        low, high = self.band_quantiles
        if not 0 < low < high < 1:
            raise ValueError(f"band_quantiles must satisfy 0 < low < high < 1, got {self.band_quantiles}")
        return self

    @classmethod
    def from_toml(cls, path: Path) -> FeatureConfig:
        """Read thresholds from a TOML file of top-level keys; absent keys keep their defaults.

        Parameters
        ----------
        path
            A TOML file such as ``sleeping_days = 45`` / ``band_quantiles = [0.25, 0.75]``.

        Returns
        -------
        FeatureConfig

        Raises
        ------
        InputError
            The file is missing, is not valid TOML, or holds an unknown key or a bad value.
        """
        path = Path(path)
        try:
            data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"feature config {path} not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"feature config {path} is not valid TOML: {exc}") from None
        try:
            return cls(**data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
                for err in exc.errors()
            )
            raise InputError(f"feature config {path}: {problems}") from None
