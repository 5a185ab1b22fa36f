"""The web app as an attacker sees it: every Gradio handler is an HTTP endpoint, hidden or not,
and takes any JSON. None may read a file the caller names, release a result without the
creating browser's key, charge for a refused image, leak internals, or leave temp files.
Also the public API through gradio_client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bolt11
import gradio as gr
import httpx
import pytest
from gradio.utils import get_upload_folder
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from app import create_app
from payments import l402
from service.config import Settings
from service.jobs import InvoiceStatus, JobState
from service.ui.handlers import NO_PASS, options_from_page
from sr_core.errors import ParameterError

from .helpers import natural_image
from .servers import serving

MODEL = "realesr-animevideov3"
#: the page's extra-pass fields left at "no further pass" (two passes: model and scale each)
NO_PASSES = [NO_PASS, 2, NO_PASS, 2]
#: the page's face fields left off: "Restore faces" unticked, no face model, the default weight
NO_FACES = [False, None, 0.5]


def png(seed: int, height: int = 20, width: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(height, width, seed=seed)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def served(tmp_path: Path, registry) -> Iterator[tuple[str, Any]]:
    app = create_app(Settings(data_dir=tmp_path / "data", max_upload_bytes=2_000_000), registry)
    with serving(app) as url:
        yield url, app


def api_job(url: str, seed: int) -> tuple[dict, str]:
    response = httpx.post(
        f"{url}/v1/upscales",
        files={"image": ("a.png", png(seed), "image/png")},
        data={"model": MODEL, "scale": "2"},
        timeout=60,
    )
    assert response.status_code == 402
    return response.json(), l402.parse_challenge(response.headers["WWW-Authenticate"]).macaroon


def dev_pay(url: str, payment_request: str) -> dict:
    paid = httpx.post(f"{url}/v1/dev/pay", json={"payment_request": payment_request, "wait": True}, timeout=120)
    assert paid.status_code == 200, paid.text
    return paid.json()


def call(url: str, api_name: str, data: list[Any], timeout: float = 60) -> tuple[str, str]:
    """A raw Gradio API call, as a script would make it: ("complete" | "error", payload text)."""
    started = httpx.post(f"{url}/gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    kind, payload = "error", ""
    with httpx.stream("GET", f"{url}/gradio_api/call/{api_name}/{event_id}", timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ").strip()
            elif line.startswith("data: ") and kind in ("complete", "error"):
                payload = line.removeprefix("data: ")
                break
    return kind, payload


def join(url: str, fn_index: int, data: list[Any], timeout: float = 60) -> str:
    """The other way in: the queue, by function index (what the page itself does)."""
    session = uuid.uuid4().hex
    joined = httpx.post(
        f"{url}/gradio_api/queue/join",
        json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None},
        timeout=30,
    )
    assert joined.status_code == 200, joined.text
    seen = []
    with httpx.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}, timeout=timeout) as s:
        for line in s.iter_lines():
            if line.startswith("data: "):
                seen.append(line)
                if '"process_completed"' in line:
                    break
    return "\n".join(seen)


def upload(url: str, data: bytes, name: str = "photo.png") -> str:
    response = httpx.post(f"{url}/gradio_api/upload", files={"files": (name, data, "image/png")}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()[0]


def file_data(path: Any) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def config(url: str) -> tuple[dict, list[dict]]:
    document = httpx.get(f"{url}/config", timeout=30).json()
    components = {component["id"]: component for component in document["components"]}
    return components, [d for d in document["dependencies"] if d["backend_fn"]]


def handler(url: str, name: str) -> tuple[int, list[str]]:
    """A handler's fn_index and its input component types."""
    components, handlers = config(url)
    for index, dependency in enumerate(httpx.get(f"{url}/config", timeout=30).json()["dependencies"]):
        if dependency["api_name"] == name and dependency["backend_fn"]:
            return index, [components[i]["type"] for i in dependency["inputs"]]
    raise AssertionError(f"no handler {name}: {[d['api_name'] for d in handlers]}")


def inputs_for(types: list[str], image: Any, session: Any = None) -> list[Any]:
    """A plausible value for each input of a handler, with `image` where a file goes."""
    values = {"image": image, "dropdown": MODEL, "radio": 2, "number": 0, "checkbox": False, "state": None}
    return [session if kind == "browserstate" else values.get(kind) for kind in types]


def cache_holds(data: bytes) -> list[Path]:
    """Files anywhere in Gradio's upload folder with exactly these bytes."""
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(get_upload_folder())
    return [
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.stat().st_size == len(data)
        and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    ]


def test_a_path_the_caller_names_is_never_read(served, tmp_path: Path) -> None:
    url, app = served
    store = app.state.service.store
    secret_bytes = png(99, 31, 37)
    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(secret_bytes)
    folder = Path(get_upload_folder())
    folder.mkdir(parents=True, exist_ok=True)
    planted = folder / f"planted-{uuid.uuid4().hex}.png"  # in Gradio's folder, but never uploaded
    planted.write_bytes(secret_bytes)
    fifo = tmp_path / "private" / "endless.png"  # reading it would block forever
    os.mkfifo(fifo)
    paths = [
        str(secret),
        f"{folder}/../../{secret.relative_to('/')}",
        str(planted),
        str(fifo),
        "/etc",
        "/etc/passwd",
        "/proc/self/environ",
        "../../../etc/passwd",
        "secret.png",
        f"{secret}\x00.png",
        "",
        12,
        ["/etc/passwd"],
        {"path": "/etc/passwd"},
    ]
    try:
        for name in ("inspect", "quote", "create"):
            fn_index, types = handler(url, name)
            for path in paths:
                payloads = []
                for image in (file_data(path), {"path": path}):
                    _kind, payload = call(url, name, inputs_for(types, image))
                    payloads.append(payload)
                    payloads.append(join(url, fn_index, inputs_for(types, image)))
                for payload in payloads:
                    # nothing about the named file: not its size, not its format, not whether it exists
                    for tell in ("37 × 31", "31 px", "PNG", "directory", "No such", "ermission", "root:", "Traceback"):
                        assert tell not in payload, (name, path, payload[:300])
                    assert str(tmp_path) not in payload, (name, path)
        assert store.count() == 0  # no job, so no invoice, nothing pinned, nothing published
        assert cache_holds(secret_bytes) == [planted]  # and no copy of the secret anywhere in the cache
        assert not any(app.state.ipfs.pins())
    finally:
        with contextlib.suppress(OSError):  # release any reader, should one exist
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(descriptor)
        planted.unlink(missing_ok=True)


def test_a_real_upload_is_accepted(served) -> None:
    """The positive control: the guard lets this server's own uploads through."""
    url, _ = served
    path = upload(url, png(5, 20, 24))
    _, types = handler(url, "inspect")
    kind, payload = call(url, "inspect", inputs_for(types, file_data(path)))
    assert kind == "complete" and json.loads(payload) == ["24 × 20 px · PNG · RGB · 8-bit"]


def test_uploads_are_capped_like_the_api(served) -> None:
    url, _ = served
    name = f"big-{uuid.uuid4().hex}.png"
    response = httpx.post(
        f"{url}/gradio_api/upload", files={"files": (name, b"\x89PNG" + b"\0" * 2_100_000, "image/png")}, timeout=60
    )
    assert response.status_code == 413
    assert not list(Path(get_upload_folder()).rglob(name))
    # Gradio takes up to a thousand files per request, each under the cap: the request is capped too
    many = [("files", (f"{uuid.uuid4().hex}.png", b"\x89PNG" + b"\0" * 500_000, "image/png")) for _ in range(6)]
    response = httpx.post(f"{url}/gradio_api/upload", files=many, timeout=60)
    assert response.status_code == 413
    assert not any(list(Path(get_upload_folder()).rglob(file[1][0])) for file in many)


def test_no_run_history_keeps_callers_keys(served) -> None:
    url, _ = served
    assert httpx.get(f"{url}/config", timeout=30).json().get("run_history") is False


def test_old_preview_folders_are_removed(served) -> None:
    url, _ = served
    old = Path(get_upload_folder()) / "satscale-previews" / f"stale-{uuid.uuid4().hex}"
    old.mkdir(parents=True)
    (old / "after.png").write_bytes(png(1))
    three_hours_ago = time.time() - 3 * 3600
    os.utime(old, (three_hours_ago, three_hours_ago))
    session, invoice = browser_job(url, 12)
    dev_pay(url, invoice)
    render_until_released(url, session)
    assert not old.exists()


def browser_job(url: str, seed: int) -> tuple[dict, str]:
    """A job made the way the page makes it: upload, then the create handler. Returns the
    browser session (with the job's key) and the invoice."""
    path = upload(url, png(seed))
    _, types = handler(url, "create")
    session = {"current": None, "jobs": []}
    data = [file_data(path), MODEL, 2, "png", 0, "auto", False, session, *NO_FACES, *NO_PASSES]
    assert types[7] == "browserstate" and len(types) == len(data)
    kind, payload = call(url, "create", data)
    assert kind == "complete", payload
    outputs = json.loads(payload)
    session = outputs[0]
    invoice = next(value for value in outputs if isinstance(value, str) and value.startswith("lnbcrt"))
    return session, invoice


def render_until_released(url: str, session: dict, timeout: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        kind, payload = call(url, "render", [session, None])
        assert kind == "complete", payload
        outputs = json.loads(payload)
        if "satscale-download" in payload or time.monotonic() > deadline:
            return outputs
        time.sleep(0.2)


def test_the_creating_browser_gets_its_result_and_nobody_else(served) -> None:
    url, app = served
    store = app.state.service.store
    session, invoice = browser_job(url, 3)
    (ticket,) = session["jobs"]
    job = store.get(ticket["job_id"])
    assert job.owner_key_sha256 == hashlib.sha256(ticket["key"].encode()).hexdigest()  # only the hash is kept
    # the invoice travels (wallets, QR codes): it does not name the job
    assert job.id not in (bolt11.decode(invoice).description or "")
    dev_pay(url, invoice)

    outputs = render_until_released(url, session)
    download = next(o["value"] for o in outputs if isinstance(o, dict) and "satscale-download" in str(o.get("value")))
    link = download.split('href="')[1].split('"')[0].replace("&amp;", "&")
    assert link.startswith(f"/v1/upscales/{job.id}/result?")
    result = httpx.get(f"{url}{link}", timeout=60)
    job = store.get(job.id)
    assert result.status_code == 200 and hashlib.sha256(result.content).hexdigest() == job.output_sha256
    slider = next(o for o in outputs if isinstance(o, dict) and o.get("__type__") == "update" and o.get("value"))
    assert slider["visible"] is True and len(slider["value"]) == 2

    # a link for this job opens nothing else, nor after it expires, nor altered
    other, _ = api_job(url, 4)
    assert httpx.get(f"{url}{link.replace(job.id, other['job_id'])}", timeout=30).status_code == 401
    assert httpx.get(f"{url}{link[:-4]}0000", timeout=30).status_code == 401
    expired = link.split("expires=")[0] + "expires=1&" + link.split("&", 1)[1]
    assert httpx.get(f"{url}{expired}", timeout=30).status_code == 401

    # twenty renders of the finished job leave no new files anywhere
    def files() -> set[Path]:
        roots = [Path(get_upload_folder()), app.state.service.settings.data_dir, Path("/tmp")]
        found = set()
        for root in roots:
            for path in root.rglob("*") if root != Path("/tmp") else root.iterdir():
                with contextlib.suppress(OSError):
                    if path.is_file() or path.is_dir():
                        found.add(path)
        return found

    before = files()
    for _ in range(20):
        kind, _payload = call(url, "render", [session, None])
        assert kind == "complete"
    added = {path for path in files() - before if "pytest" not in str(path) and "satscale-previews" not in str(path)}
    assert added == set(), sorted(added)[:10]


def test_no_handler_releases_a_result_to_a_forged_session(served) -> None:
    url, app = served
    store = app.state.service.store
    owner_session, invoice = browser_job(url, 6)
    dev_pay(url, invoice)
    render_until_released(url, owner_session)
    victim = store.get(owner_session["jobs"][0]["job_id"])
    api_victim, api_macaroon = api_job(url, 7)
    paid = dev_pay(url, api_victim["payment_request"])
    attacker_session, _ = browser_job(url, 8)  # the attacker's own job, unpaid
    secrets = [victim.output_sha256, victim.output_cid, victim.input_cid, "satscale-download", "satscale-previews"]

    # what anyone with a job id learns: its state, never its macaroon, invoice or output
    public = httpx.get(f"{url}/v1/upscales/{api_victim['job_id']}", timeout=30)
    assert "WWW-Authenticate" not in public.headers and api_macaroon not in public.text
    assert "payment_request" not in public.json() and "output" not in public.json()
    # a macaroon alone (should it leak) is not the result
    no_preimage = httpx.get(
        f"{url}/v1/upscales/{api_victim['job_id']}/result", headers={"Authorization": f"L402 {api_macaroon}"}
    )
    assert no_preimage.status_code == 401
    wrong = httpx.get(
        f"{url}/v1/upscales/{api_victim['job_id']}/result",
        headers={"Authorization": f"L402 {api_macaroon}:{'00' * 32}"},
    )
    assert wrong.status_code == 401

    components, handlers = config(url)
    assert {d["api_name"] for d in handlers} >= {"create", "render", "pay_with_dev_wallet", "verify", "open_job"}
    keys = ["garbage", api_macaroon, f"L402 {api_macaroon}:{paid['preimage']}", attacker_session["jobs"][0]["key"]]
    for key in keys:
        for target in (victim.id, api_victim["job_id"]):
            forged = {"current": target, "jobs": [{"job_id": target, "key": key, "macaroon": key}]}
            for dependency in handlers:
                types = [components[i]["type"] for i in dependency["inputs"]]
                kind, payload = call(url, dependency["api_name"], inputs_for(types, None, forged))
                for secret in secrets:
                    assert secret not in payload, f"{dependency['api_name']} leaked {secret} ({kind})"
    # nothing ran without its invoice held or settled, and nothing was charged twice
    attacker = store.get(attacker_session["jobs"][0]["job_id"])
    assert attacker.state is JobState.AWAITING_PAYMENT and attacker.invoice_status is InvoiceStatus.OPEN
    for job in store.recent(50):
        if job.state in (JobState.PROCESSING, JobState.SUCCEEDED):
            assert job.invoice_status in (InvoiceStatus.ACCEPTED, InvoiceStatus.SETTLED)


def test_handlers_answer_garbage_without_internals(served) -> None:
    url, _ = served
    _, handlers = config(url)
    garbage = [None, 0, -1, 1e308, "x" * 5000, [], {}, [[[]]], {"jobs": "all"}, True, "../../etc/passwd"]
    for dependency in handlers:
        count = len(dependency["inputs"])
        for value in garbage:
            _kind, payload = call(url, dependency["api_name"], [value] * count)
            for tell in ("Traceback", "object at 0x", "/work/", "site-packages", "Exception(", "Error("):
                assert tell not in payload, (dependency["api_name"], value, payload[:300])


def test_scale_zero_is_refused_at_both_doors(served) -> None:
    url, app = served
    response = httpx.post(
        f"{url}/v1/upscales", files={"image": ("a.png", png(1), "image/png")}, data={"model": MODEL, "scale": "0"}
    )
    assert response.status_code == 422 and "x0 is not offered" in response.json()["detail"]
    quote = httpx.get(f"{url}/v1/quote", params={"model": MODEL, "width": 10, "height": 10, "scale": 0})
    assert quote.status_code == 422
    path = upload(url, png(2))
    refusals = ("x0 is not offered", "not in the list of choices")  # ours, or Gradio's own choice check
    kind, payload = call(url, "create", [file_data(path), MODEL, 0, "png", 0, "auto", False, {}, *NO_FACES, *NO_PASSES])
    assert kind == "error" and any(text in payload for text in refusals), payload
    kind, payload = call(url, "quote", [file_data(path), MODEL, 0, False, *NO_FACES, *NO_PASSES])
    assert any(text in payload for text in refusals) and "sats" not in payload, payload
    # behind Gradio's own check, the handlers pass 0 on as 0 (never as "the default scale")
    options = options_from_page(MODEL, 0, None, 0, "auto", False)
    assert options.scale == 0 and options.tile is None
    assert app.state.service.store.count() == 0


def test_public_api_with_gradio_client(served) -> None:
    url, _ = served
    client = Client(url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/price", "/status"}  # nothing else is advertised
    price = client.predict(MODEL, 2, 100, 80, api_name="/price")
    assert "10 sats" in price and "output 200 × 160" in price
    with pytest.raises(AppError, match="20000"):
        client.predict(MODEL, 2, 100_000, 100_000, api_name="/price")  # the upload limits apply to quotes

    victim, macaroon = api_job(url, 4)
    paid = dev_pay(url, victim["payment_request"])
    credential = f"L402 {macaroon}:{paid['preimage']}"
    deadline = time.monotonic() + 60
    while (status := client.predict(victim["job_id"], credential, api_name="/status"))["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status["access"] == "owner" and status["invoice_status"] in ("accepted", "settled")
    public = client.predict(victim["job_id"], "", api_name="/status")
    assert public["access"] == "public"
    with pytest.raises(AppError, match="does not belong"):
        client.predict(victim["job_id"], "forged", api_name="/status")
    _, other_macaroon = api_job(url, 5)
    with pytest.raises(AppError, match=r"does not belong|different image"):
        client.predict(victim["job_id"], f"L402 {other_macaroon}", api_name="/status")


def test_uploads_and_renders_from_many_browsers_at_once(served) -> None:
    """Concurrent browsers: each gets its own job and only its own."""
    url, app = served
    sessions: list[dict] = []
    errors: list[BaseException] = []

    def one(seed: int) -> None:
        try:
            session, _ = browser_job(url, 40 + seed)
            sessions.append(session)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    ids = [s["jobs"][0]["job_id"] for s in sessions]
    assert len(set(ids)) == 6 and app.state.service.store.count() == 6


def test_the_pass_fields_are_checked_like_any_request(served) -> None:
    """The extra passes reach the create and quote handlers as untrusted values: each is
    checked by the intake (as the API's pipeline), and nothing is made from a bad one."""
    url, app = served
    path = upload(url, png(5))
    session = {"current": None, "jobs": []}
    gradio = "not in the list of choices"  # Gradio's own check of a choice, before our handler
    cases = [
        ([MODEL, 9, NO_PASS, 2], ("scale x9 is not offered", gradio)),
        (["nope", 2, NO_PASS, 2], ("no model named 'nope'", gradio)),
        ([{"path": "/etc/passwd"}, 2, NO_PASS, 2], ("pass model must be text", gradio)),
        ([MODEL, "2; rm", NO_PASS, 2], ("pass scale must be a whole number", gradio)),
    ]
    for passes, messages in cases:
        data = [file_data(path), MODEL, 2, "png", 0, "auto", False, session, *NO_FACES, *passes]
        kind, payload = call(url, "create", data)
        assert kind == "error" and any(m in payload for m in messages), (passes, payload[:300])
        _kind, quoted = call(url, "quote", [file_data(path), MODEL, 2, False, *NO_FACES, *passes])
        assert any(m in quoted for m in messages) and "sats" not in quoted, (passes, quoted[:300])
    assert app.state.service.store.count() == 0
    # behind Gradio's check, the intake refuses what the page's fields cannot hold, naming the pass
    front = app.state.front
    with pytest.raises(ParameterError, match=r"stage 2 \(realesr-animevideov3\): scale x9 is not offered"):
        asyncio.run(front.quote(options_from_page(MODEL, 2, None, 0, "auto", False, [MODEL, 9, NO_PASS, 2]), 10, 10))
    # the handlers' own check of the shape: pairs, at most two
    for bad in ([MODEL], [MODEL, 2] * 3, "realesr-animevideov3"):
        try:
            options_from_page(MODEL, 2, None, 0, "auto", False, bad)
        except gr.Error as exc:
            assert "passes must be model and scale pairs" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")
    chained = options_from_page(MODEL, 2, None, 0, "auto", False, [MODEL, 2, NO_PASS, 3])
    assert chained.pipeline == [
        {"model": MODEL, "scale": 2, "tile": None, "precision": "auto"},
        {"model": MODEL, "scale": 2},
    ]
