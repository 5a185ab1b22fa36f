"""The web app's Collection tab: its handlers under raw HTTP (any input shape; the API's rules and
texts; no unpaid result shown) and the whole run in a real browser."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, expect, sync_playwright

from .collection_world import SKIPPED, TOKENS, World, served_world
from .test_ui_browser import ARGS, ARTIFACTS, CHROMIUM
from .test_ui_security import call

pytestmark = pytest.mark.chain
MODEL = "realesr-animevideov3"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, registry) -> Iterator[tuple[str, FastAPI, World, str]]:
    with served_world(tmp_path_factory, registry, server_chain=True) as served:
        yield str(served.client.base_url).rstrip("/"), served.client.app, served.world, served.rpc


def fields(rpc_url: str, address: str, **changes) -> list:
    values = {"rpc": rpc_url, "contract": address, "tokens": "1-5", "model": MODEL, "scale": "model's own",
              "pixel_art": "auto", "setter": ""}  # fmt: skip
    return list((values | changes).values())


def test_the_tab_applies_the_apis_rules_with_the_apis_texts(setup) -> None:
    url, app, world, rpc = setup
    contract = world.third_party.address
    cases = [
        ({"contract": "0x12"}, {"contract": "0x12"}),
        ({"setter": "drain(address)"}, {"setter": "drain(address)"}),
        ({"tokens": "5-1"}, {"tokens": "5-1"}),
        ({"rpc": "http://10.1.2.3:8545"}, {"rpc_url": "http://10.1.2.3:8545"}),
        ({"model": "no-such-model"}, {"model": "no-such-model"}),
    ]
    for page_change, api_change in cases:
        api = httpx.post(f"{url}/v1/collections", json={"rpc_url": rpc, "contract": contract, "tokens": "1-5",
                                                         "model": MODEL} | api_change, timeout=120)  # fmt: skip
        assert api.status_code in (422, 502), (api_change, api.text)
        kind, payload = call(url, "collection_start", [*fields(rpc, contract, **page_change), None])
        assert kind == "error", (page_change, payload)
        detail = api.json()["detail"].removeprefix("body.")  # the API names where in the body
        shown = json.loads(payload)["error"]
        assert shown == detail or "not in the list of choices" in shown, (detail, payload)  # or Gradio's own
    assert app.state.collections.runs.journal.active() == []  # nothing started, nothing to pay


def test_a_run_shows_its_new_images_only_once_paid(setup) -> None:
    url, _, world, rpc = setup
    contract = world.third_party.address
    kind, payload = call(url, "collection_start", [*fields(rpc, contract), None], timeout=300)
    assert kind == "complete", payload
    outputs = json.loads(payload)
    session = outputs[0]
    run_id = session["current"]
    assert re.match(r"^col_", run_id) and outputs[3].startswith("lnbcrt")  # the BOLT11 invoice
    gallery = outputs[7]
    assert gallery and all(item["caption"].endswith("before") for item in gallery)

    # a forged session opens nothing; a session naming the run by id shows what the API's status shows
    for forged in ({"runs": ["../../etc"], "current": "../../etc"}, {"runs": [], "current": run_id}, [run_id], "x"):
        kind, payload = call(url, "collection_render", [forged])
        assert kind == "complete" and json.loads(payload)[2] == "" and json.loads(payload)[6] == [], (forged, payload)

    paid = httpx.post(f"{url}/v1/dev/pay", json={"payment_request": outputs[3]}, timeout=60)
    assert paid.status_code == 200
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        kind, payload = call(url, "collection_render", [session])
        rendered = json.loads(payload)  # pay box, QR, BOLT11, invoice, status, table, gallery, links
        if "**done**" in rendered[4]:
            break
        time.sleep(0.2)
    captions = [item["caption"] for item in rendered[6]]
    assert "#1 after" in captions and "#1 before" in captions
    assert "report.csv" in rendered[7]


@pytest.mark.browser
def test_a_collection_upgraded_from_the_browser(setup) -> None:
    url, _, world, rpc = setup
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/install.sh does it)")
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            expect.set_options(timeout=60_000)
            page.goto(url)
            page.get_by_role("tab", name="Collection").click()
            page.fill("#collection-rpc textarea, #collection-rpc input", rpc)
            page.fill("#collection-contract textarea, #collection-contract input", world.third_party.address)
            page.fill("#collection-tokens textarea, #collection-tokens input", "")  # every token: a new base URI
            page.fill("#collection-setter textarea, #collection-setter input", "setBaseURI(string)")
            page.get_by_role("combobox", name="Model", exact=True).last.click()
            page.get_by_role("option", name=MODEL).click()
            page.click("#collection-plan")
            expect(page.locator("#collection-summary")).to_contain_text(
                f"{TOKENS - len(SKIPPED)} of {TOKENS} tokens to upgrade"
            )
            page.click("#collection-start")
            expect(page.locator("#collection-qr img")).to_be_visible()
            expect(page.locator("#collection-bolt11 textarea")).to_have_value(re.compile("^lnbcrt"))
            expect(page.locator("#collection-invoice")).to_contain_text("batch 1")
            page.click("#collection-dev-pay")
            expect(page.locator("#collection-status")).to_contain_text("done", timeout=300_000)
            expect(page.locator("#collection-status")).to_contain_text("On chain: sent")
            expect(page.locator("#collection-table")).to_contain_text("upgraded")
            expect(page.locator("#collection-gallery")).to_contain_text("after")
            link = page.locator("#collection-links a.satscale-report")
            expect(link).to_be_visible()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "collection-run.png"), full_page=True)
            report = httpx.get(url + link.get_attribute("href"), timeout=30)
            assert report.status_code == 200 and report.text.count("upgraded") == TOKENS - len(SKIPPED)
        finally:
            browser.close()
