"""Training configuration: one TOML file per experiment under ``experiments/configs/``."""

from __future__ import annotations

import tomllib
import warnings
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recsys.ann import IndexSettings
from recsys.errors import InputError

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def load_toml(cls: type[M], path: Path | str, what: str, examples: str) -> M:
    """A config model from a TOML file; a missing file, bad TOML or a wrong value is an
    :class:`InputError` naming the file and the key (``data.cutoff: ...``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} not found; see {examples}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise InputError(f"{path}: {loc}: {first['msg']}") from None


class DataConfig(_Strict):
    dataset: str = "tafeng"
    data_dir: Path = Path("data")
    cutoff: date = Field(description="train on purchases before this date; features as of it")
    test_end: date | None = Field(None, description="end (exclusive) of the test window")

    @property
    def canonical(self) -> Path:
        return self.data_dir / self.dataset / "canonical"

    @property
    def features(self) -> Path:
        return self.data_dir / self.dataset / "features" / self.cutoff.isoformat()


class ModelConfig(_Strict):
    name: str = "hybrid"
    params: dict[str, Any] = {}


class EvaluationConfig(_Strict):
    ks: list[int] = [10, 20]
    audience_sizes: list[int] = [100, 1000, 5000]
    primary_metric: str = "recall@10"
    next_basket: bool = True
    # run the next-basket protocol in a second process while this one evaluates the split
    next_basket_process: bool = True
    min_buyers_known: int = 5
    min_buyers_new: int = 3
    # audiences are evaluated on at most this many member x product scores per group (known /
    # never-sold products): above it, on a random sample of max(100, this / members) products of
    # the group, its size printed and logged (audience_known_n_scored ...). 4e9 scores every
    # product up to 200k members x 20k products; at 1M members, 4,000 products per group.
    audience_max_pairs: int | None = Field(4_000_000_000, ge=1)


# ``register`` (the config key users write) hides ABCMeta.register — the virtual-subclass hook
# no one calls on a config class; pydantic warns about it at every start, so say it once here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class MlflowConfig(_Strict):
        experiment: str = "recsys"
        registered_model: str = "recsys-default"
        register: bool = True


class SparkConfig(_Strict):
    """Where a Spark model (``spark_als``) trains: ``master`` (``local[4]``, ``yarn``,
    ``sc://host:15002`` ...) and ``spark.*`` settings; see :mod:`recsys.spark.session`."""

    master: str | None = None
    conf: dict[str, str] = {}


class TrainConfig(_Strict):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    mlflow: MlflowConfig = MlflowConfig()
    spark: SparkConfig | None = None
    # the FAISS indexes the bundle carries for a vector model (recsys.ann): built here, once,
    # above these thresholds, so that servers map them instead of building them; a server
    # configured with other settings builds its own
    index: IndexSettings = IndexSettings()

    @classmethod
    def from_toml(cls, path: Path | str) -> TrainConfig:
        return load_toml(cls, path, "config", "experiments/configs/ for examples")

    def model_params(self) -> Any:
        from recsys.models import get_model

        cls = get_model(self.model.name)
        try:
            return cls.Params(**self.model.params)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise InputError(f"model.params.{loc}: {first['msg']} (model {self.model.name!r})") from None
