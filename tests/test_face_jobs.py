"""Face stages over the API and the command line: priced per face found in the upload, paid,
run, recorded with the face model's weights, and refused where they make no sense."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import skimage.data
from PIL import Image

from payments import l402
from service.cli import main as cli_main

from .test_api import PROBLEM, make_client, pay, wait_for
from .test_pipeline_jobs import front_proof, send

FAST = "realesr-animevideov3"  # repaints faces: only for the refusal
PHOTO = "realesrgan-x4plus"
FACE = "gfpgan-v1.4"
PER_FACE = 20_000  # the default price per face, msat


def encoded(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def portrait() -> bytes:
    """The astronaut at a quarter of its size: one face, quick to upscale."""
    return encoded(np.asarray(Image.fromarray(skimage.data.astronaut()).resize((128, 128), Image.Resampling.LANCZOS)))


@pytest.fixture(scope="module")
def no_face() -> bytes:
    return encoded(np.asarray(Image.fromarray(skimage.data.coffee()).resize((150, 100), Image.Resampling.LANCZOS)))


@pytest.fixture
def client(tmp_path, face_registry):
    with make_client(tmp_path, face_registry) as test_client:
        yield test_client


def upscale_then_faces(**face) -> str:
    return json.dumps([{"model": PHOTO, "scale": 4}, {"face": FACE, **face}])


def test_a_quote_by_size_counts_the_most_faces_the_stage_may_restore(client) -> None:
    size = {"width": 128, "height": 128}
    body = client.get("/v1/quote", params={"pipeline": upscale_then_faces(), **size}).json()
    upscale, faces = body["stages"]
    assert upscale["unit"] == "megapixel" and upscale["units"] is None
    assert faces["unit"] == "face" and faces["units"] == 10 and faces["amount_msat"] == 10 * PER_FACE
    assert faces["rate_msat_per_megapixel"] == PER_FACE and faces["scale"] == 1
    fewer = client.get("/v1/quote", params={"pipeline": upscale_then_faces(max_faces=2), **size}).json()
    assert fewer["stages"][1]["units"] == 2 and body["amount_msat"] - fewer["amount_msat"] == 8 * PER_FACE


@pytest.mark.slow
def test_a_paid_face_job_is_priced_per_face_found_and_recorded_with_the_face_model(
    client, face_registry, portrait
) -> None:
    created = send(client, portrait, upscale_then_faces(weight=0.25))
    assert created.status_code == 402, created.text
    body = created.json()
    # one face in the upload: the face stage costs one face, and the job is bound to one
    alone = client.get("/v1/quote", params={"model": PHOTO, "scale": 4, "width": 128, "height": 128}).json()
    upscaling = alone["stages"][0]["amount_msat"]
    assert body["amount_msat"] == math.ceil((upscaling + PER_FACE) / 1000) * 1000 > alone["amount_msat"]
    face_stage = body["pipeline"][1]
    assert face_stage["model"] == FACE and face_stage["max_faces"] == 1 and face_stage["weight"] == 0.25
    macaroon = l402.parse_challenge(created.headers["WWW-Authenticate"]).macaroon
    preimage = pay(client, body["payment_request"])["preimage"]
    credential = f"L402 {macaroon}:{preimage}"
    done = wait_for(client, body["job_id"], lambda b: b["status"] == "succeeded" and b["charged"], 240, credential)
    assert (done["output"]["width"], done["output"]["height"]) == (512, 512)
    restored = done["fidelity"]["stages"][1]
    assert restored["model"] == FACE and len(restored["faces_restored"]) == 1

    # the face stage changed the face of the upscale and nothing else
    upscale = done["intermediates"][0]
    middle = client.get(upscale["url"], headers={"Authorization": credential})
    final = client.get(f"/v1/upscales/{body['job_id']}/result", headers={"Authorization": credential})
    before = np.asarray(Image.open(io.BytesIO(middle.content))).astype(int)
    after = np.asarray(Image.open(io.BytesIO(final.content))).astype(int)
    changed = np.abs(after - before).max(axis=2) > 0
    assert changed[100:150, 200:250].mean() > 0.9 and not changed[:40].any() and not changed[320:].any()

    # the record names the face model with its weights
    front = client.app.state.front
    document = front.metadata(front.grant(body["job_id"], front_proof(credential)))
    stages = document["properties"]["provenance"]["stages"]
    face_weights = face_registry.weights_file(face_registry.get(FACE))[1]
    assert [(s["model"], s["weights_sha256"]) for s in stages][1] == (FACE, face_weights)
    assert stages[1]["weight"] == 0.25 and stages[1]["max_faces"] == 1
    report = client.get(f"/v1/provenance/{done['output']['sha256']}", headers={"Authorization": credential}).json()
    assert report["verified"], report


@pytest.mark.slow
def test_an_image_without_faces_pays_nothing_for_faces_and_gets_the_upscale_unchanged(client, no_face) -> None:
    created = send(client, no_face, upscale_then_faces(weight=0.0))
    body = created.json()
    alone = client.get("/v1/quote", params={"model": PHOTO, "scale": 4, "width": 150, "height": 100}).json()
    assert body["amount_msat"] == alone["amount_msat"] and body["pipeline"][1]["max_faces"] == 0
    macaroon = l402.parse_challenge(created.headers["WWW-Authenticate"]).macaroon
    preimage = pay(client, body["payment_request"])["preimage"]
    credential = f"L402 {macaroon}:{preimage}"
    done = wait_for(client, body["job_id"], lambda b: b["status"] == "succeeded" and b["charged"], 240, credential)
    assert done["fidelity"]["stages"][1]["faces_restored"] == []
    middle = client.get(done["intermediates"][0]["url"], headers={"Authorization": credential})
    final = client.get(f"/v1/upscales/{body['job_id']}/result", headers={"Authorization": credential})
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(middle.content))), np.asarray(Image.open(io.BytesIO(final.content)))
    )


class CountingDetector:
    def __init__(self, detect) -> None:
        self.detect, self.calls = detect, 0

    def __call__(self, rgb):
        self.calls += 1
        return self.detect(rgb)


@pytest.fixture
def counted(client, monkeypatch) -> CountingDetector:
    """The face engine's detector, counting the times it looks at an image (after the engine's
    calibration, which runs the detector on a synthetic image once)."""
    engine = client.app.state.service.engines.get(FACE)
    client.app.state.service.intake.meter.streaming_rate(engine)
    counting = CountingDetector(engine.detect)
    monkeypatch.setattr(engine, "detect", counting)
    return counting


def test_faces_are_counted_once_per_upload_and_a_token_is_bound_to_the_request_as_sent(
    client, counted, portrait, monkeypatch
) -> None:
    import asyncio
    from dataclasses import replace

    from service.intake import JobOptions

    pipeline = upscale_then_faces(weight=0.25)
    created = send(client, portrait, pipeline)
    assert created.status_code == 402 and created.json()["pipeline"][1]["max_faces"] == 1
    assert counted.calls == 1
    # the web app's quote of the same upload, asked again and again: no second look
    front = client.app.state.front
    for _ in range(3):
        priced = asyncio.run(front.quote_upload(portrait, JobOptions(pipeline=pipeline)))
        assert priced.quote.stages[1].units == 1
    assert counted.calls == 1
    # the server now counts differently (stricter rules, nothing remembered): the token still
    # finds its job, since it is bound to what was sent and not to what was counted
    engine = client.app.state.service.engines.get(FACE)
    monkeypatch.setattr(engine, "rules", replace(engine.rules, min_score=0.99999))
    client.app.state.service.intake._surveys.clear()
    macaroon = l402.parse_challenge(created.headers["WWW-Authenticate"]).macaroon
    again = send(client, portrait, pipeline, headers={"Authorization": f"L402 {macaroon}"})
    assert again.status_code != 401 and again.json()["job_id"] == created.json()["job_id"], again.text
    assert counted.calls == 1
    # a request changed in what it sends is another request: the token does not fit it
    other = send(client, portrait, upscale_then_faces(weight=0.3), headers={"Authorization": f"L402 {macaroon}"})
    assert other.status_code == 401, other.text


def test_what_is_refused_without_looking_is_refused_before_faces_are_looked_for(
    tmp_path, face_registry, portrait
) -> None:
    with make_client(tmp_path, face_registry, max_output_megapixels=0.1) as small:
        engine = small.app.state.service.engines.get(FACE)
        small.app.state.service.intake.meter.streaming_rate(engine)
        counting = CountingDetector(engine.detect)
        engine.detect = counting
        too_big = send(small, portrait, upscale_then_faces())  # 512 x 512 out: over 0.1 MP
        assert too_big.status_code == 413 and "0.1 MP limit" in too_big.json()["detail"], too_big.text
        as_gif = send(small, portrait, json.dumps([{"model": PHOTO, "scale": 1}, {"face": FACE}]), format="gif")
        assert as_gif.status_code in (415, 422), as_gif.text
        assert counting.calls == 0 and small.app.state.service.store.count() == 0


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ([{"model": PHOTO, "scale": 2}, {"face": PHOTO}], f"{PHOTO} is not a face model"),
        ([{"model": PHOTO, "scale": 2}, {"face": FACE, "scale": 2}], "scale x2 is not offered"),
        ([{"model": PHOTO, "scale": 2}, {"face": FACE, "weight": 2}], "weight must be between 0 and 1"),
        ([{"model": PHOTO, "scale": 2}, {"face": FACE, "weight": "half"}], "weight must be a number"),
        ([{"model": PHOTO, "scale": 2}, {"face": FACE, "max_faces": 51}], "max_faces must be between"),
        ([{"model": PHOTO, "scale": 2}, {"face": FACE, "steps": 3}], "unknown option 'steps'"),
        ([{"model": PHOTO, "scale": 2}, {"face": FACE, "fidelity": 0.2}], "unknown option 'fidelity'"),
        ([{"model": PHOTO, "scale": 2}, {"face": FACE, "model": FACE}], 'with "face" or "model", not both'),
        ([{"model": PHOTO, "scale": 2}, {"face": ""}], "face needs a face model's name"),
        ([{"model": PHOTO, "scale": 2}, {"face": ["x"]}], "face needs a face model's name"),
        ([{"model": FAST, "scale": 2}, {"face": FACE}], "paste photographic faces into a drawing"),
        ([{"model": PHOTO, "scale": 2}, {"face": FACE}, {"face": "codeformer"}], "a job has one face stage"),
        ([{"model": PHOTO, "scale": 2}, {"face": FACE, "precision": "bf16"}], "runs in the server's precision (fp32)"),
    ],
)
def test_face_stages_that_make_no_sense_get_a_problem_and_no_invoice(client, portrait, pipeline, message) -> None:
    text = json.dumps(pipeline)
    for response in (
        send(client, portrait, text),
        client.get("/v1/quote", params={"pipeline": text, "width": 128, "height": 128}),
    ):
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM and message in response.json()["detail"], response.text
        assert "WWW-Authenticate" not in response.headers
    assert client.app.state.service.store.count() == 0


def test_the_model_listing_shows_face_models_and_codeformers_licence(client) -> None:
    rows = {row["name"]: row for row in client.get("/v1/models").json()}
    assert rows[FACE]["kind"] == "face" and rows[FACE]["faces"] == "restores" and rows[FACE]["price_unit"] == "face"
    assert "non-commercial" in rows["codeformer"]["licence"]
    assert rows[PHOTO]["faces"] == "keeps" and rows[FAST]["faces"] == "repaints"


# ------------------------------------------------------------ the command line


@pytest.mark.slow
def test_the_cli_appends_a_face_stage_with_face(face_folder, tmp_path, portrait, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SATSCALE_WEIGHTS_DIR", str(face_folder))
    source = tmp_path / "portrait.png"
    source.write_bytes(portrait)
    code = cli_main(["upscale", str(source), "-m", PHOTO, "-s", "2", "--face", FACE, "--face-weight", "0.5",
                     "-o", str(tmp_path / "out.png")])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "1 face restored" in printed.out and "256x256" in printed.out
    assert Image.open(tmp_path / "out.png").size == (256, 256)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--face-weight", "0.5"], "--face-weight goes with --face"),
        (["--face", PHOTO], f"{PHOTO} is not a face model"),
        (["--face", FACE, "--face-weight", "1.5"], "weight must be between 0 and 1"),
        (["-m", FAST, "--face", FACE], "paste photographic faces into a drawing"),
    ],
)
def test_the_cli_refuses_face_stages_that_make_no_sense(face_folder, tmp_path, portrait, capsys, monkeypatch,
                                                        argv, message) -> None:  # fmt: skip
    monkeypatch.setenv("SATSCALE_WEIGHTS_DIR", str(face_folder))
    source = tmp_path / "portrait.png"
    source.write_bytes(portrait)
    assert cli_main(["upscale", str(source), "-s", "2", *argv]) != 0
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("portrait*x*"))


def test_models_check_recognises_a_face_checkpoint(face_folder, capsys) -> None:
    assert cli_main(["models", "check", str(face_folder / "codeformer.pth")]) == 0
    printed = capsys.readouterr().out
    assert "CodeFormer face restoration model" in printed and "non-commercial" in printed
