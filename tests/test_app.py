from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app import create_app
from service.config import Settings


def test_models_endpoint_lists_the_defaults(registry, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path), registry)) as client:
        response = client.get("/v1/models")
        assert response.status_code == 200
        rows = {row["name"]: row for row in response.json()}
        assert rows["realesrgan-x4plus"]["architecture"] == "ESRGAN"
        assert rows["realesr-animevideov3"]["scales"] == [2, 3, 4]
        health = client.get("/healthz").json()
        assert health["lightning"] == "up" and health["backend"] == "dev"


def test_settings_from_toml_and_environment(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "satscale.toml"
    config.write_text('port = 9000\nhold_budget_seconds = 60\n[model_prices_msat]\n"realesrgan-x4plus" = 7000\n')
    monkeypatch.setenv("SATSCALE_CONFIG", str(config))
    monkeypatch.setenv("SATSCALE_PORT", "9100")
    settings = Settings()
    assert settings.port == 9100  # the environment wins over the file
    assert settings.hold_budget_seconds == 60
    assert settings.model_prices_msat == {"realesrgan-x4plus": 7000}
