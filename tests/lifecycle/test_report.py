"""The report and the console say only what was measured: direction-aware colours where a paired test shows a change,
'-' for costs and metrics not measured."""

from llmcycle.evaluate.compare import _cell
from llmcycle.evaluate.metrics import direction, verdict
from llmcycle.lifecycle.report import cost_table, quality_table


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
    change = {"absolute": 0.2954, "ci95": [0.2, 0.39], "p_value": 0.001, "n": 20, "outcome": "worse"}
    metrics = {"zero-shot": {"toxicity": summary(0.06, 0.01, 0.1)},
               "full": {"toxicity": summary(0.3554, 0.2, 0.5), "paired": {"zero-shot": {"toxicity": change}}}}
    html = quality_table(metrics)
    assert "class='worse'>+0.2954" in html and "class='better'" not in html


def test_a_change_the_paired_test_does_not_show_is_not_coloured():
    """The quality table colours a change only where the paired interval over the same rows excludes 0."""
    change = {"absolute": 0.2954, "ci95": [-0.05, 0.6], "p_value": 0.2, "n": 20, "outcome": "no measurable difference"}
    metrics = {"zero-shot": {"toxicity": summary(0.06, 0.01, 0.1)},
               "full": {"toxicity": summary(0.3554, 0.0, 0.7), "paired": {"zero-shot": {"toxicity": change}}},
               "lora": {"toxicity": summary(0.3, 0.0, 0.7)}}  # no paired test at all: no colour either
    html = quality_table(metrics)
    assert "<span class=''>+0.2954" in html and "<span class=''>+0.2400" in html and "worse" not in html.split("</table>")[0]


def test_names_in_source_is_a_quality_column_and_not_measured_shows_a_dash():
    metrics = {"zero-shot": {"rougeL": summary(0.2, 0.1, 0.3), "names_in_source": {"mean": None, "ci95": [None, None], "n": 20}},
               "full": {"rougeL": summary(0.3, 0.2, 0.4), "names_in_source": summary(0.95, 0.9, 1.0)}}
    html = quality_table(metrics)
    assert "<th>names_in_source</th>" in html and "<td>-</td>" in html and "0.9500" in html


def test_costs_not_measured_show_a_dash_not_a_zero():
    metrics = {"zero-shot": {"cost": {"trainable_params": 0, "generation_time_s": 4.2, "size_on_disk_bytes": 2**20}},
               "lora": {"cost": {"trainable_params": 100, "trainable_share": 0.01, "wall_time_s": 12.5, "peak_memory_bytes": 2**30,
                                 "size_on_disk_bytes": 2**20}}}
    html = cost_table(metrics)
    zero_row = html.split("<tr><td>zero-shot</td>")[1].split("</tr>")[0]
    assert "4.2 s (generation)" in zero_row and "<td>-</td>" in zero_row  # peak memory: not measured
    assert "0.0 s" not in html and "12.5 s" in html
