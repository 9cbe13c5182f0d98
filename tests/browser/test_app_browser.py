"""The app in a real browser: headless Chromium (Debian's, driven by Playwright for Python) loads the
page, runs a short erase, an attack, an edit and a side-by-side generation by clicking, and checks what
the page shows. Screenshots of every tab go to test-artifacts/screenshots/ (gitignored);
`STUDIO_UPDATE_SCREENSHOTS=1` also writes the small copies the README shows (assets/screenshots/).

Skipped, with the reason, when Playwright or Chromium is missing (`make browser-deps` installs
Chromium; CI's `.ci/run` does it).
"""

import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import ROOT, toy_model

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]
pytest.importorskip("gradio")
pytest.importorskip("playwright", reason="playwright is not installed (pip install playwright; it is in the [test] extra)")
CHROMIUM = os.environ.get("STUDIO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("chromium is not installed (apt-get install chromium, or `make browser-deps`)", allow_module_level=True)

ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
README_SHOTS = ROOT / "assets" / "screenshots"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LONG = 600_000  # ms: the longest a job may take on a loaded 2-core machine
# Tiny budgets for the test; with STUDIO_UPDATE_SCREENSHOTS=1, enough to show a real erasure, attack and edit
# in the README's screenshots (a few minutes on a CPU).
SHOTS = bool(os.environ.get("STUDIO_UPDATE_SCREENSHOTS"))
ERASE = (
    dict(method="esd-x", iterations=60, lr=0.001, trajectory=20, sample=20, preview=10)
    if SHOTS
    else dict(method="esd-u", iterations=4, lr=None, trajectory=4, sample=6, preview=2)
)
EVAL = dict(seeds=2, prompts=3, attacks=2, timesteps=5, iters=10) if SHOTS else dict(seeds=1, prompts=2, attacks=2, timesteps=2, iters=2)
ATTACK = dict(timesteps=5, iters=10, steps=20) if SHOTS else dict(timesteps=2, iters=3, steps=6)
# direct inversion for the screenshot: on the toy model, null-text and negative-prompt edits lose the object at 20+ steps
EDIT = dict(steps=20, inner=5, method="direct inversion") if SHOTS else dict(steps=8, inner=3, method=None)
GENERATE = dict(steps=20) if SHOTS else dict(steps=10)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from apps.studio_app import build_app, launch_kwargs

    model, judge = toy_model()
    demo = build_app(tmp_path_factory.mktemp("browser-outputs"), model, judge_path=judge, device="cpu")
    _, url, _ = demo.launch(prevent_thread_lock=True, **launch_kwargs())
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        except Exception as e:  # a chromium that cannot start here (missing libraries): say so rather than fail
            pytest.skip(f"chromium at {CHROMIUM} does not start: {str(e).splitlines()[0]}")
        yield browser
        browser.close()


@pytest.fixture
def page(app, browser):
    """A fresh browser session on the app for each test (nothing carries over from another test)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(app)
    page.get_by_role("heading", name="Erasure Studio").wait_for()
    # the method's settings are filled in by the page-load event; wait for them before typing over them
    # on the toy model the Erase tab starts from the toy-world preset (esd-x: 50 iterations, not the paper's 200)
    from erasers import METHODS, get_config

    iterations = get_config(next(iter(METHODS)), "toy").iterations
    page.wait_for_function(f"document.querySelector('#erase-iterations input')?.value === '{iterations}'", timeout=30_000)
    yield page
    context.close()


def fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id}").locator("input, textarea").first
    box.fill(str(value))
    box.press("Tab")


def wait_done(page, status_id: str) -> str:
    """Wait for a job's status to say done; fail at once with the page's error if one pops up."""
    page.wait_for_selector(f"#{status_id} .job.done, #{status_id} .job.cancelled, .toast-body", timeout=LONG)
    errors = page.locator(".toast-body")
    if errors.count():
        pytest.fail(f"the page shows an error: {errors.first.inner_text()}")
    text = page.locator(f"#{status_id}").inner_text()
    assert "Cancelled" not in text
    return text


def screenshot(page, name: str, readme: bool = True) -> Path:
    """Save a full-page screenshot once every visible image has loaded (a broken image fails the test)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    loaded = "Array.from(document.images).filter(i => i.offsetParent !== null).every(i => i.complete && i.naturalWidth > 0)"
    try:  # a loaded machine can take a while to serve the images; a broken one never loads
        page.wait_for_function(loaded, timeout=60_000)
    except Exception:
        broken = page.evaluate(
            "Array.from(document.images).filter(i => i.offsetParent !== null && !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
        )
        pytest.fail(f"images that did not load on the {name} page: {broken}")
    page.wait_for_timeout(300)  # let plots finish drawing
    page.screenshot(path=str(path), full_page=True)
    if SHOTS and readme:
        from PIL import Image

        README_SHOTS.mkdir(parents=True, exist_ok=True)
        im = Image.open(path).convert("RGB")
        im = im.resize((1000, round(im.height * 1000 / im.width)), Image.LANCZOS)
        im = im.quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, kmeans=3, dither=Image.Dither.NONE
        )  # small; keeps the toy world's colours
        im.save(README_SHOTS / f"{name}.png", optimize=True)
    return path


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def erase(page, evaluate: bool = True) -> str:
    """Erase 'a triangle' by clicking (with the evaluation, or without it to be quick); returns the status text."""
    fill(page, "erase-concept", "a triangle")
    if ERASE["method"] != "esd-x":  # esd-x is preselected
        from apps.tabs.erase import method_info

        choose(page, "erase-method", ERASE["method"])
        name = method_info(ERASE["method"]).split(":")[0]  # the method's settings arrive with its description; type after them
        page.wait_for_function(f"document.querySelector('#erase-method-info')?.innerText.startsWith('{name}:')", timeout=30_000)
    fields = [
        ("erase-iterations", ERASE["iterations"]),
        ("erase-num_inference_steps", ERASE["trajectory"]),
        ("erase-sample-steps", ERASE["sample"]),
        ("erase-preview-every", ERASE["preview"]),
    ]
    if ERASE["lr"]:
        fields.append(("erase-lr", ERASE["lr"]))
    for elem_id, value in fields:
        fill(page, elem_id, value)
    page.locator("#erase-eval").get_by_text("Evaluation after erasing").click()
    if evaluate:
        for elem_id, value in [
            ("erase-ev-seeds", EVAL["seeds"]),
            ("erase-ev-prompts", EVAL["prompts"]),
            ("erase-attack-prompts", EVAL["attacks"]),
            ("erase-attack-timesteps", EVAL["timesteps"]),
            ("erase-attack-iters", EVAL["iters"]),
        ]:
            fill(page, elem_id, value)
    else:
        page.locator("#erase-evaluate input[type=checkbox]").uncheck()
    page.locator("#erase-run").click()
    page.wait_for_selector("#erase-status .bar", timeout=30_000)  # the progress bar appears while it runs
    text = wait_done(page, "erase-status")
    assert f"{ERASE['method']}: {ERASE['iterations']} steps" in text
    return text


def test_erase_by_clicking(page):
    text = erase(page)
    assert "Evaluated" in text
    assert page.locator("#erase-grid img").count() == 1
    assert page.locator("#erase-report img").count() == 1
    assert "erasure success" in page.locator("#erase-table").inner_text()
    assert page.locator("#erase-preview img").count() == 1
    assert page.locator("#erase-save").is_enabled()
    screenshot(page, "erase")
    page.locator("#erase-save").click()
    page.get_by_text("Saved to").wait_for(timeout=30_000)


def test_attack_by_clicking(page):
    erase(page, evaluate=False)
    page.get_by_role("tab", name="Attack").click()
    # the erase left its model selected here and the concept filled in
    assert "erased: a triangle" in page.locator("#attack-model input").input_value()
    assert page.locator("#attack-concept textarea, #attack-concept input").first.input_value() == "triangle"
    fill(page, "attack-prompts", "a red triangle\na striped blue triangle")
    for elem_id, value in [("attack-timesteps", ATTACK["timesteps"]), ("attack-iters", ATTACK["iters"]), ("attack-steps", ATTACK["steps"])]:
        fill(page, elem_id, value)
    page.locator("#attack-run").click()
    text = wait_done(page, "attack-status")
    assert "2 prompt(s)" in text
    assert "Attack success rate" in page.locator("#attack-asr").inner_text()
    table = page.locator("#attack-table").inner_text()
    assert "a striped blue triangle" in table and "adversarial prompt" in table
    assert page.locator("#attack-gallery img").count() == 1  # target and attacked image per prompt, with the verdicts
    screenshot(page, "attack")


def test_edit_by_clicking(page):
    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit-samples").get_by_text("a red triangle", exact=True).click()  # a sample fills image and prompts
    page.wait_for_selector("#edit-image img", timeout=30_000)
    assert page.locator("#edit-target textarea, #edit-target input").first.input_value() == "a blue triangle"
    if EDIT["method"]:
        choose(page, "edit-method", EDIT["method"])
        page.locator("#edit-inner").wait_for(state="hidden")  # null-text's own setting goes away
    else:
        fill(page, "edit-inner", EDIT["inner"])
    fill(page, "edit-steps", EDIT["steps"])
    page.locator("#edit-run").click()
    text = wait_done(page, "edit-status")
    assert "Reconstruction PSNR" in text
    assert "PSNR" in page.locator("#edit-recon-caption").inner_text()
    for elem_id in ("edit-input", "edit-recon", "edit-edit", "edit-mask"):
        assert page.locator(f"#{elem_id} img").count() == 1, elem_id
    screenshot(page, "edit")


def test_generate_side_by_side_by_clicking(page):
    erase(page, evaluate=False)
    page.get_by_role("tab", name="Generate").click()
    assert "erased: a triangle" in page.locator("#gen-model input").input_value()
    fill(page, "gen-prompts", "a red triangle\na blue circle")
    fill(page, "gen-seeds", "0-3")
    fill(page, "gen-steps", GENERATE["steps"])
    page.locator("#gen-run").click()
    wait_done(page, "gen-status")
    assert page.locator("#gen-left img").count() == 1 and page.locator("#gen-right img").count() == 1
    screenshot(page, "generate")


def test_bad_input_shows_a_readable_error(page):
    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen-prompts", "")
    page.locator("#gen-run").click()
    toast = page.locator(".toast-body").first
    toast.wait_for(timeout=30_000)
    assert "type a prompt first" in toast.inner_text()
    content = page.content()
    assert "Traceback" not in content and 'File "' not in content
    screenshot(page, "error", readme=False)


def test_non_image_upload_gets_a_readable_error(page, tmp_path):
    page.get_by_role("tab", name="Edit").click()
    notes = tmp_path / "notes.png"
    notes.write_text("this is text, not a picture")
    page.locator("#edit-image input[type=file]").set_input_files(str(notes))
    page.wait_for_timeout(1000)
    page.locator("#edit-run").click()
    toast = page.locator(".toast-body").first
    toast.wait_for(timeout=30_000)
    assert "'notes.png' is not a readable image" in toast.inner_text()
    assert "Traceback" not in page.content()


def test_cancel_by_clicking(page):
    page.get_by_role("tab", name="Erase").click()
    fill(page, "erase-iterations", 100_000)
    page.locator("#erase-run").click()
    page.wait_for_function("document.querySelector('#erase-status')?.innerText.includes('/100000')", timeout=60_000)
    t0 = time.time()
    page.locator("#erase-cancel").click()
    page.wait_for_selector("#erase-status .job.cancelled", timeout=30_000)
    assert "Cancelled at step" in page.locator("#erase-status").inner_text()
    assert time.time() - t0 < 20


def test_the_page_made_no_outside_requests(page, app):
    for tab in ("Attack", "Edit", "Generate", "Erase"):  # every tab drawn, and one job run
        page.get_by_role("tab", name=tab).click()
    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen-seeds", "0")
    fill(page, "gen-steps", 2)
    page.locator("#gen-run").click()
    wait_done(page, "gen-status")
    host = urlparse(app).netloc
    outside = [u for u in page.requests if urlparse(u).scheme in ("http", "https", "ws", "wss") and urlparse(u).netloc != host]
    assert page.requests and not outside, f"requests left the machine: {outside[:5]}"
