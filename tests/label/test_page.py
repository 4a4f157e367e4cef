"""The labeling page in a real browser (Debian's chromium, headless, driven by playwright), by keyboard alone: rank
three prompts (a tie, an unsafe flag, an unusable prompt), reload mid-way, continue, and check the file; completions
holding a script tag or an onerror image show as text and run nothing."""

from __future__ import annotations

import re
import shutil

import pytest
from labeling import HOSTILE, in_process_server, read_rows, write_completions

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
if not shutil.which("chromium"):
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def server(tmp_path):
    running, store = in_process_server(write_completions(tmp_path / "c.jsonl", 3), tmp_path / "rankings.jsonl")
    yield running.url, tmp_path / "rankings.jsonl"
    running.stop()
    store.close()


def shown(page) -> dict:
    return {"prompt": page.text_content("#prompt"), "responses": [e.text_content() for e in page.query_selector_all("#responses .text")]}


def wait_done(page, count: int, after: str | None = None) -> None:
    """Until the progress says `count` done (and the item shown is no longer `after`). Selectors, not
    wait_for_function: the page's Content-Security-Policy forbids the eval that one needs."""
    playwright.expect(page.locator("#progress-text")).to_have_text(re.compile(f"^{count} done"), timeout=15_000)
    if after is not None:
        page.wait_for_selector(f"#work:not([data-item='{after}'])", timeout=15_000)


def item_shown(page) -> str:
    return page.get_attribute("#work", "data-item")


def test_rank_three_prompts_by_keyboard_with_a_reload(server):
    url, out = server
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            problems = []
            page.on("console", lambda message: message.type == "error" and problems.append(message.text))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("dialog", lambda dialog: (problems.append("a dialog opened"), dialog.dismiss()))
            page.goto(url + "/")
            page.wait_for_selector("#responses .response", timeout=15_000)
            wait_done(page, 0)
            views = [shown(page)]
            first = item_shown(page)
            for key in ("2", "t", "1", "3", "Shift+Digit3", "Enter"):  # 2 and 1 tied best, 3 last and unsafe
                page.keyboard.press(key)
            wait_done(page, 1, after=first)
            page.keyboard.press("1")  # begun, not submitted: the reload brings the same item back, unranked
            before_reload = shown(page)
            page.reload()
            page.wait_for_selector("#responses .response", timeout=15_000)
            wait_done(page, 1)
            views.append(shown(page))
            assert views[1] == before_reload and page.query_selector("#responses .response[data-rank]") is None
            second = item_shown(page)
            for key in ("3", "2", "1", "Enter"):
                page.keyboard.press(key)
            wait_done(page, 2, after=second)
            views.append(shown(page))
            for key in ("1", "2", "3", "p", "Enter"):
                page.keyboard.press(key)
            page.wait_for_selector("#done", state="visible", timeout=15_000)
            hostile = [view for view in views if HOSTILE[0] in view["responses"]]
            assert len(hostile) == 1 and HOSTILE[1] in hostile[0]["responses"]  # shown as the characters they are
            assert page.evaluate("window.__pwned") is None
            assert page.evaluate("document.querySelectorAll('script').length") == 1
            assert page.evaluate("document.querySelectorAll('img, b').length") == 0
        finally:
            browser.close()
    assert problems == []
    rows = read_rows(out)
    assert [{"prompt": row["prompt"], "responses": row["responses"]} for row in rows] == views
    assert [row["ranking"] for row in rows] == [[1, 1, 3], [3, 2, 1], [1, 2, 3]]
    assert [row["flags"] for row in rows] == [{"unsafe": [False, False, True], "unusable": False},
                                              {"unsafe": [False] * 3, "unusable": False},
                                              {"unsafe": [False] * 3, "unusable": True}]


def test_a_labeler_enters_their_token_once_per_tab(tmp_path):
    tokens = {"ann": "ann-secret-1", "bob": "bob-secret-2"}
    running, store = in_process_server(write_completions(tmp_path / "c.jsonl", 4), tmp_path / "r.jsonl", tokens)
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
            try:
                page = browser.new_page()
                page.goto(running.url + "/")
                page.wait_for_selector("#token", state="visible", timeout=15_000)  # the API said 401: the page asks
                page.keyboard.type("wrong")
                page.keyboard.press("Enter")
                page.wait_for_selector("#token", state="visible", timeout=15_000)
                page.fill("#token", tokens["bob"])
                page.keyboard.press("Enter")
                page.wait_for_selector("#responses .response", timeout=15_000)
                for key in ("1", "2", "3", "Enter"):
                    page.keyboard.press(key)
                wait_done(page, 1)
                page.reload()  # the token stays with the tab
                page.wait_for_selector("#responses .response", timeout=15_000)
                assert page.is_hidden("#token-form")
            finally:
                browser.close()
    finally:
        running.stop()
        store.close()
    assert [row["labeler"] for row in read_rows(tmp_path / "r.jsonl")] == ["bob"]
