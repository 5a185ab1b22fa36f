"""Multi-stage jobs over the API: priced, admitted, run, recorded and verified as one job."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from payments import l402
from sr_core.upscale import UpscaleOptions, upscale_file

from .test_api import PROBLEM, make_client, pay, png, post_upscale, refunded, settled, wait_for

FAST = "realesr-animevideov3"
OTHER = "realesrgan-x4plus-anime"
TWICE = json.dumps([{"model": FAST, "scale": 2}, {"model": FAST, "scale": 2}])


def send(client, image: bytes, pipeline: str, headers: dict | None = None, **form):
    return client.post(
        "/v1/upscales",
        files={"image": ("in.png", image, "image/png")},
        data={"pipeline": pipeline, **form},
        headers=headers,
    )


@pytest.fixture
def client(tmp_path, registry):
    with make_client(tmp_path, registry) as test_client:
        yield test_client


def test_a_pipeline_is_quoted_as_the_sum_of_its_stages(client) -> None:
    size = {"width": 1000, "height": 500}
    one = client.get("/v1/quote", params={"model": FAST, "scale": 2, **size}).json()
    both = client.get("/v1/quote", params={"pipeline": TWICE, **size}).json()
    # stage 1: 2 MP out, stage 2: 8 MP out, at the light class's 2 sat/MP
    assert [s["output_megapixels"] for s in both["stages"]] == [2.0, 8.0]
    assert both["amount_msat"] == 20_000 and one["amount_msat"] == 10_000  # the one job minimum
    assert both["scale"] == 4 and (both["output_width"], both["output_height"]) == (4000, 2000)
    assert both["model"] == f"{FAST} x2 + {FAST} x2"
    assert both["estimated_seconds"] >= sum(s["estimated_seconds"] for s in both["stages"])
    assert len(one["stages"]) == 1 and one["stages"][0]["amount_msat"] == 4_000


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("not json", "pipeline is not JSON"),
        ("[]", "JSON list of 1 to 4 stages"),
        (json.dumps([{"model": FAST}] * 5), "JSON list of 1 to 4 stages"),
        (json.dumps([{"scale": 2}]), "stage 1 needs a model"),
        (json.dumps([{"model": FAST, "scale": 2}, {"model": FAST, "scale": 9}]), "stage 2 (realesr-animevideov3): "),
        (json.dumps([{"model": FAST, "seed": 3}]), "unknown option 'seed'"),
        (json.dumps([{"model": FAST, "tile": True}]), "tile size must be between"),
        (json.dumps([{"model": "nope"}]), "no model named 'nope'"),
        (json.dumps({"model": FAST}), "JSON list"),
    ],
)
def test_bad_pipelines_get_a_problem_and_no_invoice(client, pipeline: str, message: str) -> None:
    for response in (
        send(client, png(), pipeline),
        client.get("/v1/quote", params={"pipeline": pipeline, "width": 10, "height": 10}),
    ):
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM and message in response.json()["detail"]
        assert "WWW-Authenticate" not in response.headers
    assert client.app.state.service.store.count() == 0


def test_a_pipeline_and_a_model_are_not_sent_together(client) -> None:
    response = send(client, png(), TWICE, model=OTHER)
    assert response.status_code == 422 and "either a pipeline or model" in response.json()["detail"]


def test_a_paid_pipeline_equals_its_stages_by_hand_and_is_recorded_whole(client, registry, tmp_path) -> None:
    image = png(20, 28)
    pipeline = json.dumps([{"model": FAST, "scale": 2}, {"model": OTHER, "scale": 3}])
    created = send(client, image, pipeline)
    assert created.status_code == 402, created.text
    body = created.json()
    assert body["pipeline"] == [{"model": FAST, "scale": 2}, {"model": OTHER, "scale": 3}]
    macaroon = l402.parse_challenge(created.headers["WWW-Authenticate"]).macaroon
    preimage = pay(client, body["payment_request"])["preimage"]
    credential = f"L402 {macaroon}:{preimage}"
    done = wait_for(client, body["job_id"], settled, credential=credential)
    assert done["scale"] == 6 and (done["output"]["width"], done["output"]["height"]) == (168, 120)

    # bit-identical to running the two stages one after the other by hand
    (tmp_path / "in.png").write_bytes(image)
    upscale_file(registry.load_engine(FAST), tmp_path / "in.png", tmp_path / "mid.png", UpscaleOptions(scale=2))
    upscale_file(registry.load_engine(OTHER), tmp_path / "mid.png", tmp_path / "hand.png", UpscaleOptions(scale=3))
    result = client.get(f"/v1/upscales/{body['job_id']}/result", headers={"Authorization": credential})
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(result.content))), np.asarray(Image.open(tmp_path / "hand.png"))
    )

    # the consistency figures, per stage and overall
    fidelity = done["fidelity"]
    assert [s["model"] for s in fidelity["stages"]] == [FAST, OTHER]
    assert all(20 < s["psnr_db"] < 80 and 0 < s["ssim"] <= 1 for s in [*fidelity["stages"], fidelity["overall"]])

    # the intermediate: listed, downloadable with the same credential only, the first stage's output
    (listed,) = done["intermediates"]
    assert listed["stage"] == 1 and (listed["width"], listed["height"]) == (56, 40)
    mid = client.get(listed["url"], headers={"Authorization": credential})
    assert mid.status_code == 200 and mid.headers["content-type"] == "image/tiff"
    assert hashlib.sha256(mid.content).hexdigest() == listed["sha256"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(mid.content))), np.asarray(Image.open(tmp_path / "mid.png")))
    assert client.get(listed["url"]).status_code == 401
    assert client.get(listed["url"], headers={"Authorization": f"L402 {macaroon}"}).status_code == 401
    assert (
        client.get(f"/v1/upscales/{body['job_id']}/stages/2", headers={"Authorization": credential}).status_code == 404
    )
    # a stranger's tries: a forged signed link, stage numbers the route does not take, another id
    forged = client.get(listed["url"], params={"expires": 4_000_000_000, "signature": "0" * 64})
    assert forged.status_code == 401 and forged.headers["content-type"] == PROBLEM
    for stage in ("0", "5", "one", "-1"):
        odd = client.get(f"/v1/upscales/{body['job_id']}/stages/{stage}", headers={"Authorization": credential})
        assert odd.status_code == 422 and odd.headers["content-type"] == PROBLEM, stage
    other = client.get("/v1/upscales/job_nope/stages/1", headers={"Authorization": credential})
    assert other.status_code == 404 and other.headers["content-type"] == PROBLEM
    public = client.get(f"/v1/upscales/{body['job_id']}").json()
    assert "intermediates" not in public and "fidelity" not in public

    # the metadata document lists every stage with its weights, and the figures
    front = client.app.state.front
    grant = front.grant(body["job_id"], front_proof(credential))
    document = front.metadata(grant)
    provenance = document["properties"]["provenance"]
    traits = {a["trait_type"]: a["value"] for a in document["attributes"]}
    assert traits["Scale"] == 6 and traits["Consistency (SSIM)"] == done["fidelity"]["overall"]["ssim"]
    weights = [registry.weights_file(registry.get(m))[1] for m in (FAST, OTHER)]
    assert [(s["model"], s["scale"], s["weights_sha256"]) for s in provenance["stages"]] == [
        (FAST, 2, weights[0]),
        (OTHER, 3, weights[1]),
    ]
    assert provenance["fidelity"] == fidelity

    # and verification checks the stages
    report = client.get(f"/v1/provenance/{done['output']['sha256']}", headers={"Authorization": credential}).json()
    assert report["verified"], report
    (record,) = report["records"]
    assert [s["model"] for s in record["custody"]["model"]["stages"]] == [FAST, OTHER]
    checks = {c["name"]: c for c in record["checks"]}
    assert checks["model weights"]["ok"] and "2 stages on this server" in checks["model weights"]["detail"]
    assert checks["parameters"]["ok"]


def front_proof(credential: str):
    from service.access import Proof

    return Proof.from_authorization(credential)


def test_a_token_paid_for_one_pipeline_does_not_buy_another(client) -> None:
    image = png()
    created = send(client, image, TWICE)
    macaroon = l402.parse_challenge(created.headers["WWW-Authenticate"]).macaroon
    preimage = pay(client, created.json()["payment_request"])["preimage"]
    credential = f"L402 {macaroon}:{preimage}"
    wait_for(client, created.json()["job_id"], settled)
    other = json.dumps([{"model": FAST, "scale": 2}, {"model": FAST, "scale": 3}])
    before = client.app.state.service.store.count()
    assert send(client, image, other, headers={"Authorization": credential}).status_code == 401
    assert post_upscale(client, image, headers={"Authorization": credential}).status_code == 401
    assert client.app.state.service.store.count() == before
    again = send(client, image, TWICE, headers={"Authorization": credential})
    assert again.status_code == 200 and again.json()["job_id"] == created.json()["job_id"]


def test_a_failure_in_stage_two_cancels_the_invoice_and_leaves_nothing(client, registry) -> None:
    engine = registry.load_engine(OTHER)
    original = engine.run

    def broken(batch):
        raise RuntimeError("the second stage ran out of memory")

    created = send(client, png(), json.dumps([{"model": FAST, "scale": 2}, {"model": OTHER, "scale": 2}]))
    job_id = created.json()["job_id"]
    engine.run = broken  # after admission (which measured the engine): the run itself fails
    try:
        pay(client, created.json()["payment_request"], wait=False)
        failed = wait_for(client, job_id, refunded)
    finally:
        engine.run = original
    assert not failed["charged"] and "second stage ran out of memory" in failed["error"]
    outputs = client.app.state.service.runner.outputs_dir
    assert not [p.name for p in outputs.iterdir() if p.name.startswith(job_id) or p.name.startswith(f".{job_id}")]


def test_a_pipeline_that_cannot_finish_in_the_hold_budget_is_refused_before_any_invoice(tmp_path, registry) -> None:
    engine = registry.load_engine(FAST)
    with make_client(tmp_path, registry) as client:
        meter = client.app.state.service.meter
        meter.rate = lambda _engine: 1e-4  # seconds per unit of work: a fixed speed, so the test is exact
        meter.figure_rate = lambda: 0.0  # and consistency figures for free
        from service.capacity import OVERHEAD_SECONDS, nominal_image
        from service.intake import ADMISSION_SHARE

        image = nominal_image(32, 24)
        one = engine.plan(image, UpscaleOptions(scale=2)).work_pixels
        two = one + engine.plan(nominal_image(64, 48), UpscaleOptions(scale=2)).work_pixels
        # a budget the one-stage job fits in and the two-stage job does not
        budget = (OVERHEAD_SECONDS + 1e-4 * (one + two) / 2) / ADMISSION_SHARE
        client.app.state.service.settings.hold_budget_seconds = budget
        client.app.state.front.settings.hold_budget_seconds = budget
        assert post_upscale(client, png(24, 32)).status_code == 402
        refused = send(client, png(24, 32), TWICE)
        assert refused.status_code == 413 and refused.headers["content-type"] == PROBLEM
        assert "would take about" in refused.json()["detail"]
        assert client.app.state.service.store.count() == 1


def test_a_failed_job_leaves_no_intermediate_of_an_earlier_killed_attempt(client) -> None:
    created = send(client, png(), TWICE)
    job_id = created.json()["job_id"]
    runner = client.app.state.service.runner
    job = client.app.state.service.store.get(job_id)
    stray = runner.output_path(job).with_name(f"{job_id}.stage1.tif")  # as a killed run would have kept it
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"half a pipeline")
    client.portal.call(runner.fail, job_id, "an operator stopped it")
    assert not stray.exists()
    assert client.get(f"/v1/upscales/{job_id}").json()["status"] == "failed"


def test_the_estimate_counts_every_consistency_figure(registry) -> None:
    """Each stage's figure and the overall one are work the hold budget must cover."""
    from service.capacity import OVERHEAD_SECONDS, ThroughputMeter, nominal_image

    engine = registry.load_engine(FAST)
    meter = ThroughputMeter()
    meter.rate = lambda _engine: 0.0
    meter.figure_rate = lambda: 1e-6
    runs = [
        (engine, nominal_image(100, 50), UpscaleOptions(scale=2)),
        (engine, nominal_image(200, 100), UpscaleOptions(scale=2)),
    ]
    estimate = meter.estimate_stages(runs)
    compared = 100 * 50 * 5 + 200 * 100 * 5 + 100 * 50 * 17  # both images of each figure
    assert estimate.figure_seconds == pytest.approx(1e-6 * compared)
    assert estimate.seconds == pytest.approx(OVERHEAD_SECONDS + 1e-6 * compared)
    single = meter.estimate(engine, nominal_image(100, 50), UpscaleOptions(scale=2))
    assert single.figure_seconds == pytest.approx(1e-6 * 100 * 50 * 5)  # one figure: the stage is the job
