"""Writing a train config as TOML that ``recsys train --config`` reads back unchanged."""

from __future__ import annotations

import json
import math
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError
from training.config import TrainConfig


def write_train_config(cfg: TrainConfig, path: Path, header: list[str] | None = None) -> Path:
    """Write ``cfg`` as a TOML that ``TrainConfig.from_toml`` reads back to the same config
    (checked here, so a config that would not load is never written silently)."""
    # only what the sweep config set (plus the model): a default that changes later stays a default
    doc = cfg.model_dump(exclude_unset=True, exclude_none=True)
    doc["model"] = {"name": cfg.model.name}
    nones = [k for k, v in cfg.model.params.items() if v is None]
    for k in nones:  # TOML has no null: leaving the key out must mean None
        if not _default_is_none(cfg, k):
            raise RecsysError(f"{cfg.model.name}.{k} = None cannot be written as TOML: its default is not None")
    doc["model"]["params"] = {k: v for k, v in cfg.model.params.items() if v is not None}
    lines = [f"# {h}" for h in header or []]
    if nones:
        lines.append(f"# left at their default None: {', '.join(nones)}")
    text = "\n".join(lines) + ("\n\n" if lines else "") + dumps_toml(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    back = TrainConfig.from_toml(path)
    back.model_params()
    if back.model.name != cfg.model.name:
        raise RecsysError(f"{path}: the written config does not read back as {cfg.model.name}")
    return path


def _default_is_none(cfg: TrainConfig, key: str) -> bool:
    from recsys.models import get_model

    f = get_model(cfg.model.name).Params.model_fields.get(key)
    return f is not None and f.default is None


def dumps_toml(doc: dict[str, Any], _prefix: str = "") -> str:
    """A small TOML writer for configs: scalars, dates, lists and nested tables (``None``
    values are dropped: TOML has no null).

    Examples
    --------
    >>> print(dumps_toml({"a": 1, "t": {"b": [1.5, "x"], "on": True}}))
    a = 1
    <BLANKLINE>
    [t]
    b = [1.5, "x"]
    on = true
    <BLANKLINE>
    """
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    out = [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    text = "\n".join(out) + ("\n" if out else "")
    for k, v in tables.items():
        name = f"{_prefix}{_key(k)}"
        inner_scalars = any(not isinstance(x, dict) and x is not None for x in v.values())
        body = dumps_toml(v, f"{name}.")
        if inner_scalars or not v:
            text += f"\n[{name}]\n" + body
        else:
            text += body
    return text


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None) + " }"
    if isinstance(v, Path):
        return json.dumps(str(v))
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")
