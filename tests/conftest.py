from __future__ import annotations

import os
from pathlib import Path

import pytest

from sr_core.registry import ModelRegistry


@pytest.fixture(scope="session")
def weights_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private weights folder, so tests never touch the user's weights/."""
    folder = tmp_path_factory.mktemp("weights")
    os.environ["SATSCALE_WEIGHTS_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def registry(weights_folder: Path) -> ModelRegistry:
    return ModelRegistry(weights_folder)


@pytest.fixture(scope="session")
def compact(registry: ModelRegistry):
    return registry.load_engine("realesr-animevideov3", precision="fp32")


@pytest.fixture(scope="session")
def x4plus(registry: ModelRegistry):
    return registry.load_engine("realesrgan-x4plus", precision="auto")
