from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def face_folder(weights_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder with random-weight face models in their official layouts (GFPGAN v1.4,
    RestoreFormer, CodeFormer) beside the embedded defaults (whose imported cache it shares)."""
    from .face_weights import write_codeformer, write_gfpgan, write_restoreformer

    folder = tmp_path_factory.mktemp("face-weights")
    ModelRegistry(weights_folder).weights_file(ModelRegistry(weights_folder).get("realesr-animevideov3"))
    (folder / "builtin").symlink_to(weights_folder / "builtin", target_is_directory=True)
    write_gfpgan(folder, name="gfpgan-v1.4.pth")
    write_restoreformer(folder, name="restoreformer.ckpt")
    write_codeformer(folder, name="codeformer.pth")
    return folder


@pytest.fixture(scope="session")
def face_registry(face_folder: Path) -> ModelRegistry:
    return ModelRegistry(face_folder)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped after the test)."""
    from .postgres import fresh_database

    with fresh_database() as url:
        yield url
