import math

import numpy as np
import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from llmcycle.errors import UserError
from llmcycle.evaluate import MetricInput, parse_metrics, score
from llmcycle.evaluate.compare import compare
from llmcycle.models import load_model

PREDICTIONS = ["the cat sat on the mat", "a dog ran in the park today", "hello there", "we book a table for two"]
REFERENCES = ["the cat is on the mat", "the dog ran in the park", "hello world", "book a table for two people"]


def data(predictions=PREDICTIONS, references=REFERENCES, model=None, prompts=None):
    n = len(predictions)
    return MetricInput(list(predictions), list(references), prompts or [""] * n, [f"p.jsonl line {i + 1}" for i in range(n)], model)


def test_rouge_is_the_mean_of_rouge_score_f1():
    result = score(data(), ["rouge"], resamples=200)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = np.mean([scorer.score(r, p)[name].fmeasure for p, r in zip(PREDICTIONS, REFERENCES)])
        assert result[name]["mean"] == pytest.approx(expected, abs=1e-6)
        low, high = result[name]["ci95"]
        assert low <= result[name]["mean"] <= high and result[name]["n"] == 4


def test_rouge_stems_as_rouge_score_does_on_words_seen_many_times():
    predictions = ["The runners were running and ran; runs are run.", "Parks, parking and parked cars!\nTables booked.",
                   "Generously generalised generalisations", "running running running"]
    references = ["A runner runs the running race", "Parked in the park.\nBooking tables", "general generosity", "runs"]
    result = score(data(predictions, references), ["rouge"], resamples=10)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert result[name]["mean"] == pytest.approx(np.mean([scorer.score(r, p)[name].fmeasure for p, r in zip(predictions, references)]), abs=1e-6)


def test_bleu_is_sacrebleu_corpus_bleu_and_resampling_recomputes_it():
    result = score(data(), ["bleu"], resamples=200)
    assert result["bleu"]["mean"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score, abs=1e-4)
    low, high = result["bleu"]["ci95"]
    assert low < high


def test_exact_match_ignores_surrounding_whitespace_only():
    result = score(data(["a b", " a  b ", "A b"], ["a b", "a b", "a b"]), ["exact_match"], resamples=0)
    assert result["exact_match"]["mean"] == pytest.approx(2 / 3, abs=1e-6)


def test_toxicity_separates_rude_from_polite_text():
    polite = ["thank you for your help with the report", "see you at the meeting tomorrow"]
    rude = ["you are a fucking idiot", "shut up you stupid bitch"]
    result = score(data(polite + rude, [None] * 4), ["toxicity"], resamples=100)
    clean = score(data(polite, [None] * 2), ["toxicity"], resamples=0)
    assert result["toxicity"]["mean"] > clean["toxicity"]["mean"] + 0.3
    assert result["toxicity_share"]["mean"] == pytest.approx(0.5)
    assert result["toxicity_max"]["mean"] > 0.9 and "std" in result["toxicity"]


def test_perplexity_matches_the_models_own_loss(model_dir):
    loaded = load_model(str(model_dir))
    prompts, references = ["Summarize: Amy and Ben.", "hello"], ["Amy wants to plan a trip.", "Ben"]
    result = score(data(["x", "y"], references, loaded, prompts), ["perplexity"], resamples=50)
    tokenizer, eos = loaded.tokenizer, loaded.tokenizer.eos_token_id
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for prompt, reference in zip(prompts, references):
            prompt_ids = tokenizer(prompt).input_ids
            target = tokenizer(reference, add_special_tokens=False).input_ids + [eos]
            if loaded.is_encoder_decoder:
                loss = loaded.model(input_ids=torch.tensor([prompt_ids]), labels=torch.tensor([target])).loss
            else:
                ids = torch.tensor([prompt_ids + target])
                labels = torch.tensor([[-100] * len(prompt_ids) + target])
                loss = loaded.model(input_ids=ids, labels=labels).loss
            total_nll += loss.item() * len(target)
            total_tokens += len(target)
    assert result["perplexity"]["mean"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)


def test_metric_errors():
    with pytest.raises(UserError, match="unknown metric 'rogue'"):
        parse_metrics(["rogue"])
    with pytest.raises(UserError, match="p.jsonl line 2: metric 'rouge' needs a reference"):
        score(data(["a", "b"], ["a", None]), ["rouge"])
    with pytest.raises(UserError, match="perplexity' needs --model"):
        score(data(), ["perplexity"])
    assert parse_metrics(["rouge,bleu", "rouge"]) == ["rouge", "bleu"]


def test_bootstrap_is_seeded_and_compare_reports_changes():
    first = score(data(), ["rouge"], resamples=300, seed=1)
    assert score(data(), ["rouge"], resamples=300, seed=1) == first
    better = score(data(REFERENCES, REFERENCES), ["rouge"], resamples=0)
    compared = compare({"before": first, "after": better})
    change = compared["after"]["rouge1"]["change"]
    assert change["absolute"] == pytest.approx(1.0 - first["rouge1"]["mean"], abs=1e-6)
    assert change["relative"] == pytest.approx(change["absolute"] / first["rouge1"]["mean"], abs=1e-5)
    assert "change" not in compared["before"]["rouge1"]


def test_names_in_source_pools_the_names_found_in_each_prompt():
    predictions = ["Amy tells Ben that Zed called. The end.", "They meet on Monday at noon.", "Carla agrees, Thanks."]
    prompts = ["Summarize: Amy: hi Ben, Zedd here", "Summarize: Dev: see you", "Summarize: Carla: yes"]
    result = score(data(predictions, [None] * 3, prompts=prompts), ["names_in_source"], resamples=200)
    # Amy, Ben in the first prompt, Zed not a substring of it? "Zedd" contains "Zed": counted as in the input,
    # as the metric's definition says (a substring of the row's prompt); Carla in the third. The, They, Monday,
    # Thanks are not names.
    assert result["names_in_source"]["mean"] == pytest.approx(4 / 4)
    made_up = score(data(["Hugo and Amy agree."], [None], prompts=["Amy: fine"]), ["names_in_source"], resamples=0)
    assert made_up["names_in_source"]["mean"] == pytest.approx(1 / 2)


def test_names_in_source_is_not_measured_when_no_output_names_anyone():
    result = score(data(["they agree."], [None], prompts=["Amy: fine"]), ["names_in_source"], resamples=100)
    assert result["names_in_source"]["mean"] is None and result["names_in_source"]["ci95"] == [None, None]
