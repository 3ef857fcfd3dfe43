"""Every recommender, registered by name on import (see :data:`recsys.models.base.MODELS`)."""

from recsys.models import baselines, factorization, hybrid, spark_als, tifuknn  # noqa: F401
from recsys.models.base import MODELS, Recommender, Tag, TrainData, get_model

__all__ = ["MODELS", "Recommender", "Tag", "TrainData", "get_model"]
