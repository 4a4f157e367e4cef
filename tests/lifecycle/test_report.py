"""The report and the console say only what was measured: direction-aware colours, findings for every method, '-' for costs
not measured."""

from types import SimpleNamespace

from llmcycle.evaluate.compare import _cell
from llmcycle.evaluate.metrics import direction, verdict
from llmcycle.lifecycle.report import cost_table, quality_table
from llmcycle.lifecycle.stages.report import findings


def summary(mean, low, high, **extra):
    return {"mean": mean, "ci95": [low, high], "n": 20, **extra}


def test_each_metric_carries_its_direction():
    assert direction("rougeL") == 1 and direction("bleu") == 1 and direction("acc_norm") == 1
    assert direction("toxicity") == -1 and direction("toxicity_share") == -1 and direction("perplexity") == -1
    assert direction("length") == 0
    assert verdict("toxicity", +0.2954) == "worse" and verdict("toxicity", -0.1) == "better"
    assert verdict("rougeL", +0.05) == "better" and verdict("rougeL", -0.05) == "worse" and verdict("length", 4) == "same"


def test_a_rise_in_toxicity_is_red_on_the_console_and_in_the_report():
    risen = summary(0.35, 0.2, 0.5, change={"absolute": 0.2954, "relative": 5.0})
    assert "[red]" in _cell("toxicity", risen) and "[green]" in _cell("rougeL", risen)
    metrics = {"zero-shot": {"toxicity": summary(0.06, 0.01, 0.1)}, "full": {"toxicity": summary(0.3554, 0.2, 0.5)}}
    html = quality_table(metrics)
    assert "class='worse'>+0.2954" in html and "class='better'" not in html


def test_every_tuning_method_gets_a_finding_even_when_it_did_not_help():
    variants = [SimpleNamespace(name="zero-shot", stage="baseline"), SimpleNamespace(name="full", stage="finetune"),
                SimpleNamespace(name="prompt-tuning", stage="finetune")]
    metrics = {
        "zero-shot": {"rougeL": summary(0.039, 0.035, 0.043), "cost": {"trainable_params": 0}},
        "full": {"rougeL": summary(0.227, 0.21, 0.24), "cost": {"method": "full", "wall_time_s": 30.0}},
        "prompt-tuning": {"rougeL": summary(0.031, 0.028, 0.034), "cost": {"method": "prompt-tuning", "wall_time_s": 20.0}},
    }
    text = findings(metrics, variants)
    assert "<b>full</b> (full) scores ROUGE-L 0.227" in text and "above zero-shot" in text
    prompt = next(part for part in text.split("<div") if "<b>prompt-tuning</b>" in part)
    assert "finding no" in prompt and "0.031 [0.028, 0.034], below zero-shot" in prompt and "Lester et al." in prompt


def test_costs_not_measured_show_a_dash_not_a_zero():
    metrics = {"zero-shot": {"cost": {"trainable_params": 0, "generation_time_s": 4.2, "size_on_disk_bytes": 2**20}},
               "lora": {"cost": {"trainable_params": 100, "trainable_share": 0.01, "wall_time_s": 12.5, "peak_memory_bytes": 2**30,
                                 "size_on_disk_bytes": 2**20}}}
    html = cost_table(metrics)
    zero_row = html.split("<tr><td>zero-shot</td>")[1].split("</tr>")[0]
    assert "4.2 s (generation)" in zero_row and "<td>-</td>" in zero_row  # peak memory: not measured
    assert "0.0 s" not in html and "12.5 s" in html
