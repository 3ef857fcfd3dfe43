"""Service-wide settings, read from the environment (prefix ``RECSYS_``) and validated at start."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="ignore")

    data_dir: Path = Path("data")
    # Folders searched for a local copy of the built-in datasets before downloading.
    shared_data_dirs: list[Path] = [Path("../shared/data")]
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    mlflow_artifact_root: Path = Path("mlartifacts")
    registered_model: str = "recsys-default"


def get_settings() -> Settings:
    return Settings()
