"""The admin page in headless Chromium (Debian's, driven by Playwright): sign in with the
local admin key, trigger from the form and watch the bar reach 100% (pushed over server-sent
events), cancel a running operation, see the lexicon's error inline, page through history."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from testkit.broker import free_port
from testkit.harness import ServiceProcess, service_env
from testkit.waiting import eventually

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = os.environ.get("CHIVE_ADMIN_SCREENSHOT")  # where to keep one (the README's)


@pytest.fixture
async def page(tmp_path, plc):
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: ./dev test installs Debian's package"
    env = service_env(tmp_path / "data", free_port(), plc.url)
    service = ServiceProcess(env, tmp_path / "service.log")
    service.start()
    base = f"http://127.0.0.1:{env['CHIVE_PORT']}"

    async def up() -> bool:
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"{base}/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    try:
        await eventually(up, timeout=30, what="API up")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                tab = await browser.new_page(viewport={"width": 1200, "height": 900})
                await tab.goto(f"{base}/admin/backfill?pageSize=3")
                yield tab
            finally:
                await browser.close()
    finally:
        assert service.terminate() == 0, service.log_path.read_text()[-2000:]


async def start(page, kind: str, **fields: str) -> None:
    await page.select_option("select[name=type]", kind)
    for name, value in fields.items():
        await page.fill(f"input[name={name}]", value)
    await page.click("form#trigger button[type=submit]")


async def test_the_admin_page_drives_and_shows_operations(page, fresh_pds, unique):
    await page.click("#use-local")
    await expect(page.locator("#auth-state")).to_have_text("signed in (local admin key)")
    await expect(page.locator("#running-empty")).to_be_visible()

    # A slow pdsScan: it shows running with its bar; then it is cancelled from the page.
    for i in range(6):
        fresh_pds.add_repo(f"did:plc:slow{i}{unique}", {"pub.chive.graph.node": 50})
    fresh_pds.faults.stalls["getRepo"] = [0.3] * 2 + [5.0] * 4
    await start(page, "pdsScan", pdsUrl=fresh_pds.url)
    await expect(page.locator("#trigger-result")).to_contain_text("Started pdsScan")
    row = page.locator("#running tbody tr").filter(has_text="pdsScan")
    await expect(row).to_contain_text("running")
    if SCREENSHOT:
        await page.screenshot(path=SCREENSHOT, full_page=True)
    await row.get_by_role("button", name="Cancel").click()
    await expect(page.locator("#history tbody tr").filter(has_text="pdsScan")).to_contain_text(
        "cancelled", timeout=30_000
    )

    # A didSync from the form: its bar goes to 100% and it moves to the history, completed.
    did = f"did:plc:page{unique}"
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 40})
    await start(page, "didSync", did=did)
    done = page.locator("#history tbody tr").filter(has_text="didSync").first
    await expect(done).to_contain_text("completed", timeout=30_000)
    await expect(done).to_contain_text("40")

    # A freshnessScan knows its total up front: its bar reaches 100%.
    await start(page, "freshnessScan")
    scan = page.locator("#history tbody tr").filter(has_text="freshnessScan").first
    await expect(scan).to_contain_text("completed", timeout=30_000)
    await expect(scan.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    # (40 records, plus those of the pdsScan's repos read before its cancel)
    await expect(scan).to_contain_text("records (100%)")

    # The lexicon's errors show inline.
    await start(page, "didSync", did="not-a-did")
    await expect(page.locator("#trigger-result")).to_contain_text("InvalidRequest")

    # More finished operations than a page holds (pageSize=3): page through them.
    rows = page.locator("#history tbody tr")
    for n in range(1, 4):
        # Each fails at once (no CHIVE_GOVERNANCE_DID) and is pushed into the history; the
        # next is started after (an identical request while one runs would be the same one).
        await start(page, "governanceSync")
        await expect(rows.filter(has_text="governanceSync")).to_have_count(n, timeout=30_000)
    await expect(page.locator("#older")).to_be_enabled()
    newest = await rows.first.get_attribute("data-id")
    await page.click("#older")
    await expect(page.locator("#newer")).to_be_enabled()
    await expect(rows.filter(has_text="governanceSync")).to_have_count(0)
    second = await rows.all_inner_texts()
    assert [r.split("\t")[:2] for r in second] == [
        ["freshnessScan", "completed"],
        ["didSync", "completed"],
        ["pdsScan", "cancelled"],
    ]
    await page.click("#newer")
    await expect(rows.first).to_have_attribute("data-id", newest)


async def test_a_pasted_token_of_the_wrong_kind_is_refused_inline(page):
    await page.fill("#token", "not-a-jwt")
    await page.click("#use-token")
    await expect(page.locator("#auth-state")).to_contain_text("AuthenticationRequired")
