"""`satscale dev pay`: the simulated wallet from the command line, against a running server."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
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
