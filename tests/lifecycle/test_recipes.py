"""Recipes: validation, the stages end to end on a tiny model, skipping completed stages, every shipped recipe."""

import json
from pathlib import Path

import pytest
from conftest import build, dialogue_rows, run_cli, write_jsonl

from llmcycle.lifecycle.recipes import RECIPES, load_recipe, run_recipe

SHIPPED = sorted(RECIPES.glob("*.yaml"))  # templates live in recipes/templates/, apart from the recipes


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return build("t5", tmp_path_factory.mktemp("pipeline") / "t5", dropout=0.0)


@pytest.fixture
def local_data(tmp_path):
    rows = dialogue_rows(24)
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", rows[:16]),
        "test": write_jsonl(tmp_path / "test.jsonl", rows[16:]),
        "probe": write_jsonl(tmp_path / "probe.jsonl", [{"prompt": f"Is {w} a colour?", "completion": "yes" if w in ("red", "blue") else "no"} for w in ("red", "cat", "blue", "sky")]),
        "dialogsum": write_jsonl(tmp_path / "ds.jsonl", [{"dialogue": r["prompt"], "summary": r["completion"]} for r in rows]),
        "prefs": write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "no."} for r in rows[:8]]),
    }


def recipe_file(tmp_path: Path, model, data, stages) -> Path:
    text = json.dumps({
        "name": "t", "model": str(model), "data": {"train": str(data["train"]), "test": str(data["test"])},
        "probes": [str(data["probe"])], "generation": {"max_new_tokens": 6, "batch_size": 8}, "metrics": ["rouge", "toxicity"],
        "stages": stages,
    })
    path = tmp_path / "recipe.yaml"
    path.write_text(text)  # JSON is YAML
    return path


ALL_STAGES = [
    {"baseline": {"shots": [0, 1]}},
    {"finetune": {"name": "full", "method": "full", "lr": 1e-3, "max_steps": 3, "batch_size": 4}},
    {"finetune": {"name": "lora", "method": "lora", "lr": 1e-2, "max_steps": 3, "batch_size": 4}},
    {"eval": {}},
    {"align": {"name": "lora+ppo", "from": "lora", "reward": ["toxicity"], "max_steps": 2, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 4}},
    {"align": {"name": "lora+dpo", "method": "dpo", "from": "lora", "data": "prefs.jsonl", "max_steps": 2, "batch_size": 4}},
    {"deploy": {"from": "full"}},
    {"report": {}},
]


PAIRED_KEYS = {"absolute", "relative", "ci95", "p_value", "n", "outcome", "ratio"}
OUTCOMES = {"better", "worse", "no measurable difference"}


@pytest.mark.slow
def test_every_stage_end_to_end_and_a_repeat_skips_them(tiny_t5, local_data, tmp_path, capsys):
    recipe = recipe_file(tmp_path, tiny_t5, local_data, ALL_STAGES)
    out = tmp_path / "run"
    metrics = run_recipe(str(recipe), str(out))
    assert list(metrics) == ["zero-shot", "one-shot", "full", "lora", "lora+ppo", "lora+dpo", "full+int8"]
    for name, entry in metrics.items():
        assert {"mean", "ci95", "n"} <= set(entry["rougeL"]) and "toxicity" in entry and "cost" in entry, name
    assert set(metrics["full"]["forgetting"]) == {"probe"} and "probes" in metrics["zero-shot"]
    assert_paired_blocks(metrics)
    assert "what each step bought" in capsys.readouterr().out  # the findings, on the console too
    assert metrics["lora"]["cost"]["trainable_params"] < metrics["full"]["cost"]["trainable_params"]
    assert metrics["full+int8"]["cost"]["size_on_disk_bytes"] < metrics["full+int8"]["cost"]["float32_bytes"]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    html = (out / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.count("data:image/png;base64,") >= 4 and "lora+ppo" in html
    stages = sorted(p.name for p in (out / "stages").iterdir())
    assert stages == ["01-baseline", "02-finetune-full", "03-finetune-lora", "04-eval", "05-align-lora-ppo",
                      "06-align-lora-dpo", "07-deploy", "08-report"]
    # Both align stages continued the LoRA variant's adapter: their runs hold an adapter of the same rank
    for name in ("05-align-lora-ppo", "06-align-lora-dpo"):
        config = json.loads((out / "stages" / name / "run" / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == json.loads((out / "stages/03-finetune-lora/run/adapter/adapter_config.json").read_text())["r"]
    capsys.readouterr()
    assert run_recipe(str(recipe), str(out)) == metrics
    assert capsys.readouterr().err.count("is complete; skipping") == 8


def assert_paired_blocks(metrics: dict) -> None:
    """Each variant carries its paired tests on the same rows against the variants the findings compare it with."""
    compared = {"one-shot": {"zero-shot"}, "full": {"zero-shot", "one-shot"}, "lora": {"zero-shot", "one-shot", "full"},
                "lora+ppo": {"zero-shot", "one-shot", "lora"}, "lora+dpo": {"zero-shot", "one-shot", "lora", "lora+ppo"},
                "full+int8": {"zero-shot", "one-shot"}}
    assert "paired" not in metrics["zero-shot"]
    for name, others in compared.items():
        assert set(metrics[name]["paired"]) == others, name
        for other, block in metrics[name]["paired"].items():
            assert {"rougeL", "toxicity"} <= set(block), (name, other)
            for change in block.values():
                assert set(change) == PAIRED_KEYS and change["outcome"] in OUTCOMES and change["n"] == 8, (name, other)
    probe = metrics["full"]["forgetting_paired"]["probe"]
    assert set(probe) == PAIRED_KEYS and probe["absolute"] == pytest.approx(metrics["full"]["forgetting"]["probe"], abs=1e-6)


@pytest.mark.slow
def test_an_interrupted_run_continues_from_the_first_incomplete_stage(tiny_t5, local_data, tmp_path, capsys):
    recipe = recipe_file(tmp_path, tiny_t5, local_data, ALL_STAGES[:4])
    out = tmp_path / "run"
    run_recipe(str(recipe), str(out))
    (out / "stages/03-finetune-lora/stage.json").unlink()  # as if killed before the stage finished
    (out / "stages/04-eval/stage.json").unlink()
    capsys.readouterr()
    metrics = run_recipe(str(recipe), str(out))
    assert capsys.readouterr().err.count("is complete; skipping") == 2 and "lora" in metrics


@pytest.mark.parametrize("stages,message", [
    ([{"pretend": {}}], "stage 1: unknown stage 'pretend'"),
    ([{"finetune": {"method": "lora", "lora_rank": 0}}], "--lora-rank must be at least 1"),
    ([{"finetune": {"name": "a", "lr": "fast"}}], "field 'lr': expected a number"),
    ([{"finetune": {"name": "a", "data": "x.jsonl"}}], "'data' comes from the recipe"),
    ([{"align": {"from": "nothing", "reward": ["toxicity"]}}], "'from: nothing' names no earlier variant"),
    ([{"align": {"method": "dpo", "beta": 0.1}}], "method dpo needs data"),
    ([{"align": {"reward": ["toxicity"], "data": {"task": "nothing"}}}], "unknown task 'nothing'"),  # PPO's prompts
    ([{"align": {"method": "sft"}}], "method must be ppo or dpo"),
    ([{"eval": {"verbose": True}}], "takes no options"),
    ([{"finetune": {"name": "a"}}, {"finetune": {"name": "a"}}], "variant name 'a' is used twice"),
    ([{"baseline": {"cot": {"shots": 3}}}], "cot is {data:"),
    ([{"baseline": {"cot": {"data": {"task": "arithmetic"}, "shots": -1}}}], "cot.shots must be a whole number of at least 0"),
    ([{"baseline": {"cot": {"data": {"task": "arithmetic"}, "self_consistency": "five"}}}], "cot.self_consistency must be a whole number of at least 0"),
    ([{"rag": {"docs": "docs/", "finetune": {"lr": 1.0e-3}}}], "finetune trains on the docs task's questions"),
    ([{"rag": {"docs": {"task": "docs-qa"}, "variants": "zero-shot"}}], "'variants' must be a list"),
    ([{"rag": {"docs": {"task": "docs-qa"}, "questions": {"task": "nothing"}}}], "unknown task 'nothing'"),
    ([{"finetune": {"name": "a"}}, {"deploy": {"from": "a", "label": "x"}}], "deploy takes from, quantize and name"),
])
def test_bad_recipes_are_one_line_errors(stages, message, tiny_t5, local_data, tmp_path, capsys):
    recipe = recipe_file(tmp_path, tiny_t5, local_data, stages)
    assert run_cli("run", recipe, "--out", tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_data_and_unknown_field(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("model: m\ndata: {train: nope.jsonl, test: nope.jsonl}\nstages: []\n")
    assert run_cli("run", tmp_path / "r.yaml", "--dry-run") == 2
    assert "file nope.jsonl does not exist" in capsys.readouterr().err
    (tmp_path / "r.yaml").write_text("model: m\ncolour: blue\ndata: {}\nstages: []\n")
    assert run_cli("run", tmp_path / "r.yaml") == 2
    assert "unknown field 'colour'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("recipe", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_recipe_runs_with_a_tiny_model(recipe, tiny_t5, local_data, tmp_path, capsys):
    assert run_cli("run", recipe, "--dry-run") == 0
    data = []
    if load_recipe(recipe).template:  # recipes written for hub datasets get local rows with the same fields
        data = ["--data", f"train={local_data['dialogsum']}", "--data", f"test={local_data['dialogsum']}"]
    elif not all(isinstance(spec, dict) and "task" in spec for spec in load_recipe(recipe).data.values()):
        data = ["--data", f"train={local_data['train']}", "--data", f"test={local_data['test']}"]
    probes = [item for i, _ in enumerate(load_recipe(recipe).probes) for item in ("--data", f"probe-{i}={local_data['probe']}")]
    out = tmp_path / "out"
    assert run_cli("run", recipe, "--smoke", "--model", tiny_t5, "--out", out, *data, *probes) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics and all("rougeL" in entry for entry in metrics.values())
    assert (out / "report.html").is_file()


QUICKSTART_VARIANTS = ["zero-shot", "one-shot", "few-shot", "full", "lora", "prompt-tuning", "lora+ppo", "dpo", "docs-ft", "rag",
                       "docs-ft+rag", "int8"]


@pytest.mark.slow
def test_quickstart_shortened_on_both_embedded_models(tmp_path, capsys):
    out = tmp_path / "qs"
    assert run_cli("quickstart", "--smoke", "--out", out) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["t5", "llama"]
    for kind, block in metrics.items():
        assert list(block) == QUICKSTART_VARIANTS, kind
        for name, entry in block.items():
            summary = (["exact_match", "rougeL"] if name in ("docs-ft", "rag", "docs-ft+rag")
                       else ["rouge1", "rouge2", "rougeL", "rougeLsum", "toxicity", "repetition", "names_in_source"])
            for metric in summary:
                assert {"mean", "ci95", "n"} <= set(entry[metric]), (kind, name, metric)
            assert {"trainable_params", "size_on_disk_bytes"} <= set(entry["cost"]) or "rag_index_seconds" in entry["cost"], (kind, name)
            # a measured time: training for a trained variant, generating the test set for a prompted one (never a 0 filler)
            measured = entry["cost"].get("wall_time_s", entry["cost"].get("generation_time_s", entry["cost"].get("rag_index_seconds")))
            assert measured is not None and measured > 0, (kind, name)
        for name in ("full", "lora", "prompt-tuning", "lora+ppo", "dpo", "int8"):
            assert set(block[name]["forgetting"]) == {"classify", "extract"}, (kind, name)
            assert set(block[name]["suite_forgetting"]) == {"everyday-mc"}, (kind, name)
        for name in ("full", "lora", "prompt-tuning", "lora+ppo", "dpo"):
            assert {"peak_memory_bytes", "trainable_share"} <= set(block[name]["cost"]), (kind, name)
        assert block["lora+ppo"]["cost"]["from"] == block["dpo"]["cost"]["from"] == "lora"
        assert block["int8"]["cost"]["method"] == "int8-dynamic"
        cot = block["few-shot"]["chain_of_thought"]
        assert cot["task"] == "arithmetic" and {"accuracy", "answered"} <= set(cot["cot"]) and "change" in cot["cot"]["accuracy"]
        assert "change" in cot["self-consistency"]["accuracy"]  # the recipe's self_consistency: 5, beside greedy CoT
        assert block["rag"]["cost"]["closed_book_exact_match"] is not None and "hit@5" in block["rag"]
        # what the findings read: paired tests on the same rows, with their outcome
        for name, against in (("few-shot", "zero-shot"), ("lora", "full"), ("lora+ppo", "lora"), ("dpo", "lora"), ("rag", "zero-shot"),
                              ("docs-ft+rag", "docs-ft")):
            metric = "exact_match" if "rag" in name else "toxicity" if name in ("lora+ppo", "dpo") else "rougeL"
            assert block[name]["paired"][against][metric]["outcome"] in OUTCOMES, (kind, name)
        assert set(block["full"]["forgetting_paired"]) == {"classify", "extract"}, kind
        for stage in ("01-baseline", "02-finetune-full", "06-align-lora-ppo", "07-align-dpo", "08-rag-rag", "09-deploy-int8", "10-report"):
            assert (out / kind / "stages" / stage / "stage.json").is_file(), (kind, stage)
        assert (out / kind / "report.html").is_file() and (out / kind / "stages/03-finetune-lora/run/adapter/adapter_config.json").is_file()
    html = (out / "report.html").read_text()
    for section in ("Every stage, model by model", "Serve what was tuned", "What each step bought", "Quality", "Cost", "Forgetting",
                    "Benchmark suites", "Chain-of-thought", "Retrieval against fine-tuning", "Outputs side by side"):
        assert html.count(section) >= (1 if section in ("Every stage, model by model", "Serve what was tuned") else 2), section
    for kind in ("t5", "llama"):
        for part in (f"llmcycle serve --model embedded-{kind} --port", f"--adapter lora={out / kind}/stages/03-finetune-lora/run/adapter",
                     f"--adapter lora-ppo={out / kind}/stages/06-align-lora-ppo/run/adapter", f"--adapter dpo={out / kind}/stages/07-align-dpo/run/adapter"):
            assert part in printed and part in html, part
        assert "from openai import OpenAI" in printed
    # each model decodes with its own n-gram block (the recipe's per-model generation), and the snippet asks the
    # server for the same block, so the served reply equals the report's
    assert "extra_body={'no_repeat_ngram_size': 4}" in printed and "extra_body={'no_repeat_ngram_size': 10}" in printed
    assert "t5: what each step bought" in printed and "llama: what each step bought" in printed
    assert html.count("data:image/png;base64,") >= 10


def test_a_parquet_train_file_is_counted_as_finetune_counts_it(tiny_t5, local_data, tmp_path):
    """The runner sizes the validation cadence from the training rows: a Parquet file is read as rows, not lines."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = dialogue_rows(20)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    data = {**local_data, "train": tmp_path / "train.parquet"}
    stages = [{"finetune": {"name": "lora", "method": "lora", "epochs": 1, "batch_size": 8}}]
    run_recipe(str(recipe_file(tmp_path, tiny_t5, data, stages)), str(tmp_path / "run"))
    log = [json.loads(line) for line in (tmp_path / "run/stages/01-finetune-lora/run/log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3]  # ceil(20 / 8) steps, as finetune rounds
    assert all("eval_loss" in record for record in log)  # every max(1, 3 // 10) = 1 steps


def test_a_template_given_as_a_recipe_says_what_it_is(capsys):
    template = RECIPES / "templates" / "dialogsum.yaml"
    assert run_cli("run", template, "--dry-run") == 2
    assert "is a data template (prompt/completion), not a recipe" in capsys.readouterr().err


@pytest.mark.slow
def test_a_rag_stage_puts_each_variant_beside_itself_with_retrieval(tiny_t5, tmp_path):
    """prompting, fine-tuning and each of them with retrieval, on the synthetic product's questions, in one report."""
    recipe = tmp_path / "rag.yaml"
    recipe.write_text(json.dumps({
        "name": "rag", "model": str(tiny_t5), "data": {"train": {"task": "docs-qa", "rows": 24, "seed": 1},
                                                      "test": {"task": "docs-qa", "rows": 8, "seed": 2}},
        "generation": {"max_new_tokens": 6, "batch_size": 8}, "metrics": ["rouge"],
        "stages": [{"baseline": {"shots": [0]}}, {"finetune": {"name": "full", "method": "full", "max_steps": 2, "batch_size": 4}},
                   {"eval": {}}, {"rag": {"docs": {"task": "docs-qa", "rows": 24, "seed": 2}, "retriever": "bm25", "k": 2}},
                   {"report": {}}],
    }))
    metrics = run_recipe(str(recipe), str(tmp_path / "run"))
    assert list(metrics) == ["zero-shot", "full", "zero-shot+rag", "full+rag"]
    for name in ("zero-shot+rag", "full+rag"):
        assert {"exact_match", "f1", "rougeL", "hit@2", "answerable@2"} <= set(metrics[name])
        assert {"rag_index_seconds", "rag_prompt_tokens", "closed_book_exact_match"} <= set(metrics[name]["cost"])
        # against the same model without retrieval, on the same questions
        (source, block), = metrics[name]["paired"].items()
        assert source == name.removesuffix("+rag") and set(block) == {"exact_match", "f1", "rougeL"}
        assert block["exact_match"]["outcome"] in OUTCOMES and block["exact_match"]["n"] == 8
    assert metrics["full+rag"]["cost"]["wall_time_s"] == metrics["full"]["cost"]["wall_time_s"]  # training time carried
    html = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>Retrieval against fine-tuning</h2>" in html and "full+rag" in html
    assert "Retrieval " in html.split("<h2>What each step bought</h2>")[1].split("<h2>Quality</h2>")[0]
