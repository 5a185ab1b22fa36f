"""`satscale dev pay`: the simulated wallet from the command line, against a running server."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app import create_app
from service.config import Settings

from .helpers import natural_image
from .servers import serving

SATSCALE = shutil.which("satscale", path=str(Path(sys.executable).parent)) or "satscale"


def test_dev_pay_from_the_command_line(tmp_path: Path, registry) -> None:
    image = io.BytesIO()
    Image.fromarray(natural_image(16, 16)).save(image, "PNG")
    with serving(create_app(Settings(data_dir=tmp_path / "data"), registry)) as url:
        body = httpx.post(
            f"{url}/v1/upscales",
            files={"image": ("a.png", image.getvalue(), "image/png")},
            data={"model": "realesr-animevideov3", "scale": "2"},
            timeout=60,
        ).json()
        result = subprocess.run(
            [SATSCALE, "dev", "pay", body["payment_request"], "--server", url, "--wait"],
            capture_output=True,
            text=True,
            timeout=300,
            env=os.environ,
        )
        assert result.returncode == 0, result.stderr
        assert "not real money" in result.stdout
        preimage = result.stdout.split("preimage ")[1].split()[0]
        assert hashlib.sha256(bytes.fromhex(preimage)).hexdigest() == body["payment_hash"]
        again = subprocess.run(
            [SATSCALE, "dev", "pay", body["payment_request"], "--server", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 2 and "already paid" in again.stderr


TWICE = '[{"model": "realesr-animevideov3", "scale": 2}, {"model": "realesr-animevideov3", "scale": 2}]'


@pytest.mark.parametrize("form", [{"model": "realesr-animevideov3", "scale": "2"}, {"pipeline": TWICE}])
def test_verify_from_the_command_line(tmp_path: Path, registry, form: dict) -> None:
    image = io.BytesIO()
    Image.fromarray(natural_image(16, 20, seed=3)).save(image, "PNG")
    with serving(create_app(Settings(data_dir=tmp_path / "data"), registry)) as url:
        response = httpx.post(
            f"{url}/v1/upscales",
            files={"image": ("a.png", image.getvalue(), "image/png")},
            data=form,
            timeout=60,
        )
        body = response.json()
        macaroon = response.headers["WWW-Authenticate"].split('macaroon="')[1].split('"')[0]
        paid = httpx.post(
            f"{url}/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True}, timeout=120
        ).json()
        result = httpx.get(
            f"{url}/v1/upscales/{body['job_id']}/result",
            headers={"Authorization": f"L402 {macaroon}:{paid['preimage']}"},
            timeout=60,
        )
        downloaded = tmp_path / "upscaled.png"
        downloaded.write_bytes(result.content)
        deadline = time.monotonic() + 60
        owner = {"Authorization": f"L402 {macaroon}:{paid['preimage']}"}
        while (
            httpx.get(f"{url}/v1/upscales/{body['job_id']}", headers=owner).json()["provenance"]["chain"]["status"]
            != "confirmed"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)

        ok = subprocess.run([SATSCALE, "verify", str(downloaded), "--server", url], capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        assert "VERIFIED" in ok.stdout and "this image is the output" in ok.stdout and "MISMATCH" not in ok.stdout
        # the file's own Content Credentials, read here, and the server's cross-check of them
        assert "Content Credentials intact: signed by Satscale content credentials" in ok.stdout
        assert f"claims   the record of payment {body['payment_hash']}" in ok.stdout
        assert "[ok] credentials match the record" in ok.stdout
        if "pipeline" in form:  # every stage is named, and its weights checked
            assert "stage 2  realesr-animevideov3 x2" in ok.stdout and "2 stages on this server" in ok.stdout

        altered = tmp_path / "altered.png"
        altered.write_bytes(result.content[:-1] + bytes([result.content[-1] ^ 1]))
        unknown = subprocess.run([SATSCALE, "verify", str(altered), "--server", url], capture_output=True, text=True)
        assert unknown.returncode == 2 and "no provenance record" in unknown.stderr
        # the edited file still names its record, and fails the hard binding to its bytes
        assert "Content Credentials DO NOT VALIDATE" in unknown.stdout
        assert "assertion.dataHash.mismatch" in unknown.stdout
        assert f"claims   the record of payment {body['payment_hash']}" in unknown.stdout
