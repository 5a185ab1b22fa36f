"""The model registry as the service uses it: engines on the configured device, `auto`
meaning the server's precision, one engine per model and precision (the registry caches)."""

from __future__ import annotations

from pathlib import Path

from sr_core.device import Precision
from sr_core.engines import Engine
from sr_core.errors import ParameterError
from sr_core.kinds import Preset
from sr_core.registry import ModelDescription, ModelRegistry

DEFAULT_MODEL = "realesrgan-x4plus"


class Engines:
    def __init__(self, registry: ModelRegistry, device: str | None, precision: str) -> None:
        self.registry = registry
        self.device = device
        self.precision = precision

    def get(self, model: str, precision: str = "auto") -> Engine:
        """The engine a request runs on. A model that is loaded once, in the server's precision
        (a multi-GB diffusion model says so), is never loaded again per request."""
        server = self.registry.load_engine(model, device=self.device, precision=self.precision)
        if precision in ("auto", self.precision):
            return server
        wanted = Precision.parse(precision)
        if wanted is server.info.precision:
            return server
        if server.info.precision_fixed:
            raise ParameterError(
                f"{model} runs in the server's precision ({server.info.precision.value}); leave precision at auto"
            )
        return self.registry.load_engine(model, device=self.device, precision=wanted)

    def names(self) -> list[str]:
        return [entry.name for entry in self.registry.entries()]

    def default_model(self) -> str:
        names = self.names()
        return DEFAULT_MODEL if DEFAULT_MODEL in names else names[0]

    def listing(self) -> list[ModelDescription]:
        return self.registry.describe_all()

    def presets(self) -> list[Preset]:
        return self.registry.presets()

    def weights(self, model: str) -> tuple[Path, str]:
        """The file behind a model and its sha256 (what a provenance record names)."""
        return self.registry.weights_file(self.registry.get(model))
