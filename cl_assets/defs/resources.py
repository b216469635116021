"""Dagster resources: settings, the store and the base model, each built from CL's Settings."""


from typing import Any

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from cl_assets.core.ingest import Ingestor
from cl_assets.core.registry import Registry
from cl_assets.core.store import Store
from cl_assets.settings import Settings


class SettingsResource(ConfigurableResource):
    """CL's settings (`CL_*` environment), with optional overrides for tests and deployments."""

    home: str | None = None
    database_url: str | None = None
    base_model: str | None = None
    overrides_json: str | None = None  # any other Settings field, as a JSON object

    def get(self) -> Settings:
        import json

        values: dict[str, Any] = json.loads(self.overrides_json) if self.overrides_json else {}
        for key in ("home", "database_url", "base_model"):
            if getattr(self, key) is not None:
                values[key] = getattr(self, key)
        return Settings(**values)


class StoreResource(ConfigurableResource):
    """The SQL store, opened once per process."""

    settings: SettingsResource
    _store: Store | None = PrivateAttr(default=None)

    def get(self) -> Store:
        if self._store is None:
            self._store = Store.from_settings(self.settings.get())
        return self._store

    def ingestor(self) -> Ingestor:
        return Ingestor(self.settings.get(), self.get())

    def registry(self) -> Registry:
        return Registry(self.settings.get(), self.get())


class BaseModelResource(ConfigurableResource):
    """The base model's local folder (converted once from the embedded GGUF when needed)."""

    settings: SettingsResource

    def folder(self) -> Any:
        from cl_assets.core.model import ensure_base_model

        return ensure_base_model(self.settings.get())
