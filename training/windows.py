"""The rolling-origin protocol: several validation windows before the test window.

A window trains on every purchase before its ``cutoff`` (features as of that date) and scores the
purchases in ``[cutoff, end)``. On Ta-Feng (November 2000 - February 2001) the validation windows
are December (November as history) and January (November - December), the test window February:

* every choice — features, rules such as the holiday rule, hyperparameters — is made on the
  **mean over the validation windows** (sweeps optimise that mean);
* the test window is scored once, after every choice, and chooses nothing.

A window is named by its test month (``2001-02``); :func:`validation_mean` averages a metric over
windows, and :func:`ensure_features` builds a window's features snapshot when it is missing (it
reads nothing on or after the cutoff, so building it is always safe).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

VALIDATION_MEAN = "validation_mean"


class Window(BaseModel):
    """Train before ``cutoff``, score ``[cutoff, end)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cutoff: date
    end: date

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.end <= self.cutoff:
            raise ValueError(f"end {self.end} must be after cutoff {self.cutoff}")
        return self

    @property
    def label(self) -> str:
        """The window's name: its first test month, ``YYYY-MM``."""
        return f"{self.cutoff:%Y-%m}"


def as_windows(value: Any) -> Any:
    """A config's ``validation``: one window (a TOML table) or several (an array of tables) -> a
    list; for a pydantic ``mode="before"`` validator."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    return value


def check_windows(windows: list[Window], test_cutoff: date) -> None:
    """Validation windows must be distinct and end where the test window starts or before: a
    window that reads the test month would let it choose."""
    labels = [w.label for w in windows]
    if len(set(labels)) != len(labels):
        raise ValueError(f"validation windows must start in different months; got {', '.join(labels)}")
    for w in windows:
        if w.end > test_cutoff:
            raise ValueError(
                f"the validation window {w.cutoff} .. {w.end} ends after the test window starts ({test_cutoff}): "
                "choosing on it would read test purchases; end it at the test cutoff or before"
            )


def validation_mean(per_window: dict[str, dict[str, float]], keys: list[str] | None = None) -> dict[str, float]:
    """The mean of each metric over the windows that measured it (``keys``: only these)."""
    import math

    names = keys if keys is not None else sorted({k for m in per_window.values() for k in m})
    out: dict[str, float] = {}
    for k in names:
        vals = [m[k] for m in per_window.values() if k in m and m[k] is not None and math.isfinite(m[k])]
        if vals and len(vals) == len(per_window):
            out[k] = float(sum(vals) / len(vals))
    return out


def ensure_features(data_dir: Path, dataset: str, cutoff: date) -> Path:
    """The features snapshot of ``dataset`` as of ``cutoff``, built first when it is missing."""
    out = data_dir / dataset / "features" / cutoff.isoformat()
    if (out / "manifest.json").exists():
        return out
    from features.build import build_features
    from features.config import FeatureConfig

    build_features(data_dir / dataset / "canonical", out, cutoff, FeatureConfig())
    return out
