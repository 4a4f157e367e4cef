"""Forgetting with a test (`eval --compare`), paired statistics, and reference-free metrics on prompt-only rows."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from conftest import run_cli, write_jsonl
from llmcycle.evaluate.forgetting import exact_binomial_p, mcnemar
from llmcycle.evaluate.stats import Statistic, mean_of_first, paired_change
from suite_items import ROWS


@pytest.fixture(scope="module")
def tuned_gpt2(gpt2_dir, tmp_path_factory):
    """The tiny GPT-2 with its weights nudged: a stand-in for a tuned model of the same architecture."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tuned")
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.08)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gpt2_dir).save_pretrained(out)
    return out


@pytest.mark.parametrize("forgot,learned", [(0, 0), (3, 0), (7, 2), (20, 31), (1, 1)])
def test_mcnemar_exact_p_is_the_binomial_test_on_discordant_items(forgot, learned):
    expected = 1.0 if forgot + learned == 0 else binomtest(forgot, forgot + learned, 0.5).pvalue
    assert exact_binomial_p(forgot, forgot + learned) == pytest.approx(expected, rel=1e-9)
    before = np.array([1] * forgot + [0] * learned + [1, 0, 1])
    after = np.array([0] * forgot + [1] * learned + [1, 0, 1])
    assert mcnemar(before, after) == {"forgot": forgot, "learned": learned, "p_value": round(expected, 6)}


def test_paired_bootstrap_resamples_the_same_rows_on_both_sides():
    rng = np.random.default_rng(0)
    before = rng.normal(0.5, 0.2, size=200)
    after = before + 0.05 + rng.normal(0, 0.01, size=200)  # a small change, consistent on every row
    change = paired_change(Statistic(before[:, None], mean_of_first), Statistic(after[:, None], mean_of_first), 500, 0)
    assert change["absolute"] == pytest.approx(np.mean(after - before), abs=1e-6)
    assert 0 < change["ci95"][0] < change["absolute"] < change["ci95"][1] < 0.06  # unpaired, the interval would span 0
    assert change["p_value"] == pytest.approx(1 / 500) and change["relative"] == pytest.approx(change["absolute"] / before.mean(), abs=1e-5)


def test_compare_on_a_suite_gives_paired_change_mcnemar_and_forgot_learned(gpt2_dir, tuned_gpt2, tmp_path):
    rows = [{**{k: v for k, v in row.items() if k != "id"}, "question": f"{row['question']} ({i})"} for i, row in enumerate(ROWS * 3)]
    suite = write_jsonl(tmp_path / "suite.jsonl", rows)
    out, samples, copy = tmp_path / "m.json", tmp_path / "s.jsonl", shutil.copytree(gpt2_dir, tmp_path / "copy")
    assert run_cli("eval", "-m", gpt2_dir, "--suite", suite, "--compare", tuned_gpt2, "--compare", copy,
                   "--out", out, "--samples", samples, "--bootstrap", 300) == 0
    result = json.loads(out.read_text())
    before, tuned, same = result.values()
    assert "change" not in before["acc"] and before["acc"]["n"] == 18
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    names = list(result)
    correct = {name: np.array([line["correct"] for line in lines if line["model"] == name]) for name in names}
    assert tuned["forgot"] == int(np.sum(correct[names[0]] & ~correct[names[1]]))
    assert tuned["learned"] == int(np.sum(~correct[names[0]] & correct[names[1]]))
    change = tuned["acc"]["change"]
    assert change["absolute"] == pytest.approx(tuned["acc"]["mean"] - before["acc"]["mean"], abs=2e-6)
    assert change["p_value"] == pytest.approx(mcnemar(correct[names[0]], correct[names[1]])["p_value"])
    assert change["ci95"][0] <= change["absolute"] <= change["ci95"][1] and set(change) == {"absolute", "relative", "ci95", "p_value"}
    assert same["forgot"] == same["learned"] == 0 and same["acc"]["change"]["absolute"] == 0 and same["acc"]["change"]["p_value"] == 1


PROMPTS = [{"prompt": f"Summarize: Amy and Ben talk about plan {i}. Summary:"} for i in range(6)]


def test_reference_free_metrics_run_on_prompt_only_rows(gpt2_dir, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out, saved = tmp_path / "m.json", tmp_path / "p.jsonl"
    assert run_cli("eval", "-m", gpt2_dir, "--data", data, "--metrics", "toxicity,length,distinct", "--max-new-tokens", 8,
                   "--out", out, "--save-predictions", saved, "--bootstrap", 100) == 0
    result = json.loads(out.read_text())
    predictions = [json.loads(line)["prediction"] for line in saved.read_text().splitlines()]
    assert result["length"]["mean"] == pytest.approx(np.mean([len(p.split()) for p in predictions]), abs=1e-6)
    assert result["toxicity"]["n"] == 6 and 0 <= result["toxicity"]["mean"] <= 1 and 0 < result["distinct_1"]["mean"] <= 1


@pytest.mark.parametrize("metric", ["rouge", "perplexity"])
def test_a_reference_metric_on_prompt_only_rows_is_one_line_naming_metric_and_row(metric, gpt2_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    assert run_cli("eval", "-m", gpt2_dir, "--data", data, "--metrics", f"toxicity,{metric}", "--out", tmp_path / "m.json") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {data} line 1: metric '{metric}' needs a reference")
    assert not (tmp_path / "m.json").exists()


def test_compare_on_data_pairs_generation_metrics(gpt2_dir, tuned_gpt2, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "m.json"
    assert run_cli("eval", "-m", gpt2_dir, "--data", data, "--compare", tuned_gpt2, "--metrics", "length",
                   "--max-new-tokens", 6, "--out", out, "--bootstrap", 200) == 0
    before, after = json.loads(out.read_text()).values()
    change = after["length"]["change"]
    assert change["absolute"] == pytest.approx(after["length"]["mean"] - before["length"]["mean"], abs=2e-6)
    assert change["ci95"][0] <= change["absolute"] <= change["ci95"][1] and 0 < change["p_value"] <= 1


def test_samples_forgetting_pairs_two_samples_files_by_id(tmp_path):
    from llmcycle.evaluate.forgetting import samples_forgetting

    before = [{"id": str(i), "correct": i % 2 == 0} for i in range(40)]
    after = [{"id": str(i), "correct": i % 2 == 0 and i % 8 != 0} for i in reversed(range(40))]  # 5 items forgotten
    write_jsonl(tmp_path / "a.jsonl", before)
    write_jsonl(tmp_path / "b.jsonl", after)
    result = samples_forgetting(str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), 300, 0)
    assert (result["forgot"], result["learned"]) == (5, 0) and result["acc"]["change"]["absolute"] == pytest.approx(-5 / 40)
    assert result["acc"]["change"]["p_value"] == pytest.approx(binomtest(0, 5, 0.5).pvalue, abs=1e-6)
    assert result["significant"] == (result["acc"]["change"]["ci95"][1] < 0)


@pytest.mark.slow
def test_a_recipe_probe_may_be_a_suite_and_tuned_variants_get_the_paired_forgetting_test(tmp_path):
    """baseline, a full fine-tune and eval on a tiny T5, with a suite probe: the variant's forgetting is tested."""
    from conftest import build, dialogue_rows

    from llmcycle.lifecycle.recipes import load_recipe, run_recipe

    model = build("t5", tmp_path / "t5", dropout=0.0)
    rows = dialogue_rows(16)
    write_jsonl(tmp_path / "train.jsonl", rows[:12])
    write_jsonl(tmp_path / "test.jsonl", rows[12:])
    write_jsonl(tmp_path / "probe.jsonl", ROWS)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({
        "name": "s", "model": str(model), "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "probes": [{"suite": "probe.jsonl", "shots": 1, "name": "mc", "holistic": True}], "generation": {"max_new_tokens": 4, "batch_size": 8},
        "metrics": ["rouge"], "stages": [{"baseline": {"shots": [0]}}, {"finetune": {"name": "full", "method": "full", "lr": 1e-2,
                                                                               "max_steps": 3, "batch_size": 4}}, {"eval": {}},
                                                    {"report": {}}],
    }))
    metrics = run_recipe(str(recipe), str(tmp_path / "run"))
    base, tuned = metrics["zero-shot"]["suites"]["mc"], metrics["full"]["suites"]["mc"]
    assert base["acc"]["n"] == tuned["acc"]["n"] == 6 and Path(tuned["samples"]).is_file()
    test = metrics["full"]["suite_forgetting"]["mc"]
    assert test["acc"]["change"]["absolute"] == pytest.approx(tuned["acc"]["mean"] - base["acc"]["mean"], abs=2e-6)
    assert {"forgot", "learned", "significant"} <= set(test) and "probes" not in metrics["full"]
    assert set(tuned["holistic"]) == {"accuracy", "calibration_ece", "robustness", "toxicity", "efficiency"}
    report = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>Benchmark suites</h2>" in report and "<h2>Holistic view</h2>" in report
    assert f"forgot {test['forgot']}, learned {test['learned']}: " + ("<b>significant</b>" if test["significant"] else "not significant") in report
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace('"probe.jsonl"', '"missing.jsonl"'))
    with pytest.raises(Exception, match="suite missing.jsonl does not exist"):
        load_recipe(str(bad))
