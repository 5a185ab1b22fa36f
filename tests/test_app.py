from __future__ import annotations

from fastapi.testclient import TestClient

from app import create_app


def test_models_endpoint_lists_the_defaults(registry) -> None:
    client = TestClient(create_app(registry))
    response = client.get("/v1/models")
    assert response.status_code == 200
    rows = {row["name"]: row for row in response.json()}
    assert rows["realesrgan-x4plus"]["architecture"] == "ESRGAN"
    assert rows["realesr-animevideov3"]["scales"] == [2, 3, 4]
    assert client.get("/healthz").json() == {"status": "ok"}
