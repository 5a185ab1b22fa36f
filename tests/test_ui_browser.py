"""The web app in a real browser: Debian's chromium driven headless by playwright.

Run alone with `pytest -m browser`. Screenshots are saved under test-artifacts/.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app import create_app
from service.config import Settings

from .helpers import natural_image
from .servers import serving

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/install.sh does it)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


@pytest.fixture
def server(tmp_path: Path, registry) -> Iterator[tuple[str, object]]:
    app = create_app(Settings(data_dir=tmp_path / "data"), registry)
    with serving(app) as url:
        yield url, app


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "holiday.png"
    Image.fromarray(natural_image(60, 80, seed=21)).save(path)
    return path


def upload_and_pay(page: Page, url: str, photo: Path, publish: bool = False) -> str:
    page.goto(url)
    page.set_input_files("#upload input[type=file]", str(photo))
    expect(page.locator("#image-info")).to_contain_text("80 × 60 px · PNG · RGB · 8-bit")
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="realesr-animevideov3").click()
    expect(page.locator("#model-note")).to_contain_text("not for photos of people")
    page.locator('#scale [data-testid="2-radio-label"]').click()
    expect(page.locator("#quote")).to_contain_text("10 sats")
    expect(page.locator("#quote")).to_contain_text("output 160 × 120")
    # the choice to publish, and what it means, are on the page before any invoice
    expect(page.locator("#publish")).to_contain_text("anyone who holds the input can find the upscale")
    expect(page.locator("#quote")).to_contain_text("private (not published)")
    if publish:
        page.locator("#publish input").check()
        expect(page.locator("#quote")).to_contain_text("published on IPFS")
    page.click("#get-invoice")
    expect(page.locator("#invoice-qr img")).to_be_visible()
    expect(page.locator("#bolt11 textarea")).to_have_value(re.compile("^lnbcrt"))
    expect(page.locator("#countdown")).to_contain_text("Expires in")
    invoice = page.locator("#bolt11 textarea").input_value()
    expect(page.get_by_text("not real money")).to_be_visible()
    page.click("#dev-pay")
    expect(page.locator("#progress [data-state=succeeded]")).to_be_visible()
    return invoice


def test_upload_quote_pay_result_and_provenance(browser: Browser, server, photo: Path) -> None:
    url, app = server
    expect.set_options(timeout=60_000)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    invoice = upload_and_pay(page, url, photo, publish=True)

    store = app.state.service.store
    (job,) = store.recent(1)
    assert job.payment_request == invoice and job.publish is True
    expect(page.locator("#job-status")).to_contain_text(job.id)
    # before / after slider with both images, and the full-resolution download
    expect(page.locator("#slider img")).to_have_count(2)
    with page.expect_download() as download_info:
        page.click("#download a")
    downloaded = download_info.value.path()
    assert hashlib.sha256(Path(downloaded).read_bytes()).hexdigest() == store.get(job.id).output_sha256
    with Image.open(downloaded) as full:
        assert full.size == (160, 120)

    # provenance panel: the job's real CIDs, hashes and chain record
    expect(page.locator("#provenance [data-chain-status=confirmed]")).to_be_visible()
    job = store.get(job.id)
    panel = page.locator("#provenance")
    for value in (job.input_cid, job.output_cid, job.metadata_cid, job.output_sha256, job.chain_tx):
        expect(panel).to_contain_text(value)
    gateway = panel.locator(f"a[data-cid='{job.output_cid}']").get_attribute("href")
    served = httpx.get(f"{url}{gateway}", timeout=30).content
    assert hashlib.sha256(served).hexdigest() == job.output_sha256
    expect(page.locator("#metadata")).to_contain_text(f"ipfs://{job.output_cid}")
    # the Content Credentials inside the downloaded file: signer, actions, the input as ingredient
    credentials = page.locator("#provenance .satscale-credentials")
    expect(credentials).to_contain_text("Satscale content credentials")
    expect(credentials.locator("[data-credentials-state=valid]")).to_be_visible()
    expect(credentials.locator("[data-action='c2pa.resized']")).to_contain_text("realesr-animevideov3")
    expect(credentials.locator("[data-ingredient]")).to_have_text(job.input_sha256)
    page.click("#verify")
    expect(page.locator("#verify-result")).to_contain_text("Verified")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-desktop.png"), full_page=True)

    # a reload keeps the paid result: the browser remembers its jobs
    page.reload()
    expect(page.locator("#job-status")).to_contain_text(job.id)
    expect(page.locator("#slider img")).to_have_count(2)
    page.get_by_text("Jobs in this browser").click()
    expect(page.locator("#jobs")).to_contain_text(job.id)
    page.close()


def test_phone_and_dark_mode(browser: Browser, server, photo: Path) -> None:
    url, _ = server
    expect.set_options(timeout=60_000)
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True)
    page = context.new_page()
    upload_and_pay(page, url, photo)
    expect(page.locator("#slider img")).to_have_count(2)
    # not published: the provenance names the CIDs but links no gateway, which would not serve them
    expect(page.locator("#provenance")).to_contain_text("only the hashes are on chain")
    assert page.locator("#provenance a[data-cid]").count() == 0
    # nothing wider than the phone, and the dark theme is in use
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1
    assert page.evaluate(
        "document.body.classList.contains('dark') || document.documentElement.classList.contains('dark')"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-phone-dark.png"), full_page=True)
    context.close()


def test_a_bad_file_is_refused_at_once(browser: Browser, server, tmp_path: Path) -> None:
    url, app = server
    expect.set_options(timeout=30_000)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    page = browser.new_page()
    page.goto(url)
    page.set_input_files("#upload input[type=file]", str(broken))
    expect(page.locator("#image-info")).to_contain_text("Refused")
    assert app.state.service.store.count() == 0
    page.close()


def test_add_a_pass_then_pay_and_download_each_pass(browser: Browser, server, photo: Path) -> None:
    url, app = server
    expect.set_options(timeout=60_000)
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.goto(url)
    page.set_input_files("#upload input[type=file]", str(photo))
    expect(page.locator("#image-info")).to_contain_text("80 × 60 px")
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="realesr-animevideov3").click()
    page.locator('#scale [data-testid="2-radio-label"]').click()
    expect(page.locator("#quote")).to_contain_text("output 160 × 120")
    # a second pass, x2 on the first one's result: the passes, the total scale, size and price update
    page.click("#add-pass")
    page.get_by_role("combobox", name="Pass 2").click()
    page.get_by_role("option", name="realesr-animevideov3").click()
    page.locator('#pass-2-scale [data-testid="2-radio-label"]').click()
    expect(page.locator("#quote")).to_contain_text("2 passes")
    expect(page.locator("#quote")).to_contain_text("x4 in all")
    expect(page.locator("#quote")).to_contain_text("output 320 × 240")
    # the preset a user would otherwise build fills the passes itself
    expect(page.locator("#preset")).to_be_visible()
    page.click("#get-invoice")
    expect(page.locator("#bolt11 textarea")).to_have_value(re.compile("^lnbcrt"))
    page.click("#dev-pay")
    expect(page.locator("#progress [data-state=succeeded]")).to_be_visible()

    store = app.state.service.store
    (job,) = store.recent(1)
    assert [s.scale for s in job.stages] == [2, 2]
    # the before/after compares the input with the final output; each pass can be downloaded
    expect(page.locator("#slider img")).to_have_count(2)
    with page.expect_download() as final:
        page.click("#download a.satscale-download")
    with Image.open(final.value.path()) as full:
        assert full.size == (320, 240)
    with page.expect_download() as first_pass:
        page.click("#download a[data-stage='1']")
    with Image.open(first_pass.value.path()) as mid:
        assert mid.size == (160, 120)
    # how faithful the result is to the input, per pass and for the whole job
    expect(page.locator("#provenance .satscale-fidelity")).to_contain_text("Whole job")
    expect(page.locator("#provenance .satscale-fidelity")).to_contain_text("Pass 2")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-passes.png"), full_page=True)
    page.close()


@pytest.fixture
def face_server(tmp_path: Path, face_registry) -> Iterator[tuple[str, object]]:
    app = create_app(Settings(data_dir=tmp_path / "data"), face_registry)
    with serving(app) as url:
        yield url, app


def test_restore_faces_is_priced_per_face_explained_per_model_and_paid(
    browser: Browser, face_server, tmp_path: Path
) -> None:
    import skimage.data

    url, app = face_server
    expect.set_options(timeout=120_000)
    portrait = tmp_path / "portrait.png"
    Image.fromarray(skimage.data.astronaut()).resize((128, 128), Image.Resampling.LANCZOS).save(portrait)
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    page.goto(url)
    page.set_input_files("#upload input[type=file]", str(portrait))
    expect(page.locator("#image-info")).to_contain_text("128 × 128 px")
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="realesrgan-x4plus", exact=True).click()
    page.locator('#scale [data-testid="2-radio-label"]').click()
    expect(page.locator("#face-note")).to_contain_text("Suits this model")
    page.locator("#restore-faces input").check()
    page.get_by_role("combobox", name="Face model").click()
    page.get_by_role("option", name="gfpgan-v1.4").click()
    expect(page.locator("#quote")).to_contain_text("up to 1 face restored")
    # an illustration model: the page says why not, and the server refuses it
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="realesr-animevideov3").click()
    expect(page.locator("#face-note")).to_contain_text("Not with realesr-animevideov3")
    expect(page.locator("#quote")).to_contain_text("paste photographic faces into a drawing")
    # CodeFormer's licence is on the page before anyone picks it
    page.get_by_role("combobox", name="Face model").click()
    page.get_by_role("option", name="codeformer").click()
    expect(page.locator("#face-note")).to_contain_text("non-commercial")
    page.get_by_role("combobox", name="Face model").click()
    page.get_by_role("option", name="gfpgan-v1.4").click()
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="realesrgan-x4plus", exact=True).click()
    page.locator('#scale [data-testid="2-radio-label"]').click()
    expect(page.locator("#quote")).to_contain_text("up to 1 face restored")
    page.click("#get-invoice")
    expect(page.locator("#bolt11 textarea")).to_have_value(re.compile("^lnbcrt"))
    page.click("#dev-pay")
    expect(page.locator("#progress [data-state=succeeded]")).to_be_visible()
    (job,) = app.state.service.store.recent(1)
    assert [s.model for s in job.stages] == ["realesrgan-x4plus", "gfpgan-v1.4"]
    expect(page.locator("#provenance .satscale-fidelity")).to_contain_text("1 face restored")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-faces.png"), full_page=True)
    page.close()
