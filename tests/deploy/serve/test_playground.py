"""The playground page in a real browser: Debian's chromium, headless, driven by playwright. It picks two served
names, types a prompt, and both streamed outputs must equal what the API answers for them."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
openai = pytest.importorskip("openai")
if not shutil.which("chromium"):
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

from llmcycle.deploy.serve.config import ServerConfig  # noqa: E402
from llmcycle.deploy.serve.listening import bind  # noqa: E402
from llmcycle.deploy.serve.server import RunningServer  # noqa: E402
from serving import make_adapters  # noqa: E402

PROMPT = "Summarize: Amy and Ben. #Person1#: can we book a table today? Summary:"


@pytest.fixture(scope="module")
def server(llama_dir, tmp_path_factory):
    adapters = make_adapters(llama_dir, tmp_path_factory.mktemp("playground-adapters"), False)
    config = ServerConfig(str(llama_dir), [(name, str(path)) for name, path in adapters.items()], served_model_name="llama",
                          api_key="pw-key")
    running = RunningServer(config, bind("127.0.0.1", 0)).start()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def api_text(server, model: str) -> str:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="pw-key", max_retries=0)
    return client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text


@pytest.mark.slow
def test_two_models_side_by_side_in_chromium(server):
    expected = {name: api_text(server, name) for name in ("lora1", "lora2")}
    assert expected["lora1"] != expected["lora2"], "the adapters should answer differently, or the page test proves little"
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.fill("#api-key", "pw-key")  # the server has a key: the page asks for it
            page.click("#load-models")
            page.wait_for_selector(".model-choice[value=lora2]", timeout=30_000)
            for box in page.query_selector_all(".model-choice"):
                box.set_checked(box.get_attribute("value") in expected)
            page.fill("#max_tokens", "12")
            page.fill("#temperature", "0")
            page.fill("#prompt", PROMPT)
            page.click("#run")
            page.wait_for_function("document.querySelectorAll('.output[data-done=true]').length === 2", timeout=60_000)
            shown = {name: page.inner_text(f".output[data-model={name}]") for name in expected}
            meta = page.inner_text("#outputs")
        finally:
            browser.close()
    assert shown == expected
    assert "finish: length" in meta
