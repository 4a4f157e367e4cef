"""Pre-training: span corruption masks ~15% in spans of ~3 and reassembles; text infilling masks ~30% and targets the chunk; tiny T5 and GPT-2 learn; outputs load; resume; bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from llmcycle.errors import UserError
from llmcycle.train.pretrain import PretrainConfig, noise_mask, pretrain, row_maker, span_corruption, text_infilling
from llmcycle.data.synthetic import SyntheticConfig, write_synthetic

TINY = dict(layers=2, hidden=64, heads=4, vocab_size=500, context=128, max_length=64, batch_size=8)
SENTINELS = list(range(900, 1000))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine its spin-waits cost seconds a step."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    return write_synthetic(SyntheticConfig(task="corpus", rows=200, seed=1, out=str(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")))


@pytest.fixture(scope="module")
def t5_run(corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "t5"
    metrics = pretrain(PretrainConfig(corpus=str(corpus_file), out=str(out), arch="t5", max_steps=20, save_every=10, **TINY))
    return out, metrics


def reassemble(inputs: list[int], targets: list[int]) -> list[int]:
    """The original chunk: each sentinel in the input replaced by the tokens after it in the target."""
    spans, current = {}, None
    for token in targets:
        if token in SENTINELS:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    return [piece for token in inputs for piece in (spans[token] if token in SENTINELS else [token])]


def span_lengths(mask: list[bool]) -> list[int]:
    lengths, run = [], 0
    for masked in [*mask, False]:
        if masked:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return lengths


def test_span_corruption_masks_15_percent_in_spans_of_3_and_reassembles():
    rng = np.random.default_rng(0)
    shares, lengths = [], []
    for _ in range(500):
        size = int(rng.integers(20, 200))
        mask = noise_mask(size, 0.15, 3.0, 100, rng)
        assert len(mask) == size
        shares.append(sum(mask) / size)
        lengths += span_lengths(mask)
        chunk = rng.integers(5, 800, size).tolist()
        inputs, targets = span_corruption(chunk, SENTINELS, [1], 0.15, 3.0, rng)
        assert inputs[-1] == targets[-1] == 1
        assert reassemble(inputs[:-1], targets[:-1]) == chunk
        used = [t for t in inputs if t in SENTINELS]
        assert used == SENTINELS[: len(used)] and targets[0] == SENTINELS[0]
        assert len(inputs) < size + 1 and len(targets) < size // 2
    assert abs(np.mean(shares) - 0.15) < 0.01
    assert 2.5 < np.mean(lengths) < 3.5


def test_span_corruption_edge_cases_and_seeding():
    assert noise_mask(2, 0.15, 3.0, 100, np.random.default_rng(0)).count(True) == 1
    assert noise_mask(10, 0.5, 1.0, 100, np.random.default_rng(0)).count(True) == 5
    assert len(span_lengths(noise_mask(1000, 0.5, 1.0, 3, np.random.default_rng(0)))) == 3  # capped by the sentinels
    draw = lambda: noise_mask(100, 0.15, 3.0, 100, np.random.default_rng([0, 1, 2]))  # noqa: E731
    assert draw() == draw()


def test_text_infilling_masks_30_percent_one_mask_a_span_and_targets_the_whole_chunk():
    rng, mask_id = np.random.default_rng(0), 3
    shares = []
    for draw in range(300):
        size = int(rng.integers(20, 200))
        chunk = rng.integers(5, 800, size).tolist()
        mask = noise_mask(size, 0.3, 3.0, size, np.random.default_rng([0, draw]))  # the mask text_infilling draws
        inputs, targets = text_infilling(chunk, mask_id, [1], 0.3, 3.0, np.random.default_rng([0, draw]))
        assert targets == [*chunk, 1] and inputs[-1] == 1
        assert [t for t in inputs[:-1] if t != mask_id] == [t for t, masked in zip(chunk, mask) if not masked]
        assert inputs.count(mask_id) == len(span_lengths(mask))
        assert not any(a == b == mask_id for a, b in zip(inputs, inputs[1:]))
        shares.append(sum(mask) / size)
    assert abs(np.mean(shares) - 0.3) < 0.01


def test_mixed_objective_draws_each_per_chunk_with_its_papers_density(t5_run):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(t5_run[0] / "model")
    cfg = PretrainConfig(corpus="c.txt", out="o", arch="t5", objective="mixed")
    assert cfg.density("span-corruption") == 0.15 and cfg.density("text-infilling") == 0.3
    make, sentinel = row_maker(cfg, tokenizer, True), tokenizer.convert_tokens_to_ids("<extra_id_0>")
    chunk = tokenizer("Amy asks Ben to bring the blue chairs to the party on Friday evening, and Ben agrees to it.",
                      add_special_tokens=False).input_ids
    infilled = 0
    for draw in range(200):
        row = make(chunk, np.random.default_rng([0, draw]))
        inputs, targets = row.input_ids, row.labels
        if targets[:-1] == chunk:  # text infilling: the whole chunk back, one sentinel a span
            infilled += 1
            assert sentinel in inputs and "<extra_id_1>" not in tokenizer.convert_ids_to_tokens(inputs)
        else:  # span corruption: sentinel 0, the first span's tokens, ...
            assert targets[0] == sentinel and len(targets) < len(chunk)
    assert 70 < infilled < 130
    assert make(chunk, np.random.default_rng(5)) == make(chunk, np.random.default_rng(5))


@pytest.mark.slow
def test_decoder_only_text_infilling_rows_are_the_noisy_chunk_then_the_chunk_with_loss_on_the_chunk(corpus_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    metrics = pretrain(PretrainConfig(corpus=str(corpus_file), out=str(tmp_path / "llama"), arch="llama", objective="text-infilling",
                                      max_steps=20, lr=3e-3, **TINY))
    assert metrics["objective"] == "text infilling" and metrics["final_loss"] < metrics["first_loss"] - 0.5
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llama" / "model")
    assert tokenizer.mask_token == "<mask>"  # added, and the embeddings grew with it
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "llama" / "model").get_input_embeddings().weight.shape[0] == len(tokenizer)
    chunk = tokenizer("Amy asks Ben to bring the blue chairs to the party on Friday evening.", add_special_tokens=False).input_ids
    cfg = PretrainConfig(corpus="c.txt", out="o", arch="llama", objective="mixed")
    make, eos = row_maker(cfg, tokenizer, False), tokenizer.eos_token_id
    kinds = set()
    for draw in range(40):
        row = make(chunk, np.random.default_rng([1, draw]))
        if row.labels == row.input_ids == chunk:  # mixed: plain next-token prediction
            kinds.add("next-token")
            continue
        kinds.add("infilling")
        split = row.input_ids.index(eos) + 1
        assert row.input_ids[split:] == [*chunk, eos] and row.labels == [-100] * split + [*chunk, eos]
        assert tokenizer.mask_token_id in row.input_ids[:split] and len(row.input_ids[:split]) < len(chunk) + 1
    assert kinds == {"next-token", "infilling"}


@pytest.mark.slow
def test_tiny_t5_learns_by_text_infilling(corpus_file, tmp_path):
    metrics = pretrain(PretrainConfig(corpus=str(corpus_file), out=str(tmp_path / "t5"), arch="t5", objective="text-infilling",
                                      max_steps=20, **TINY))
    assert metrics["objective"] == "text infilling" and metrics["final_loss"] < metrics["first_loss"] - 0.5


@pytest.mark.slow
def test_tiny_t5_learns_and_its_folder_loads_in_plain_transformers_and_llmcycle(t5_run):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from llmcycle.models import load_model

    out, metrics = t5_run
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml", "log.jsonl", "metrics.json", "model"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-10"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 21)) and all(np.isfinite(r["loss"]) for r in log)
    assert np.mean([r["loss"] for r in log[-5:]]) < np.mean([r["loss"] for r in log[:3]]) - 0.5
    assert metrics["objective"] == "span corruption" and metrics["steps"] == 20
    assert metrics["final_loss"] < metrics["first_loss"] and metrics["tokens_seen"] > 0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForSeq2SeqLM.from_pretrained(out / "model")
    assert tokenizer.convert_tokens_to_ids("<extra_id_99>") == len(tokenizer) - 1
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 500
    loaded = load_model(str(out))
    assert loaded.is_encoder_decoder
    ids = tokenizer("Amy: Hi Ben! <extra_id_0> at noon.", return_tensors="pt").input_ids
    torch.testing.assert_close(loaded.model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits,
                               model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits)
    # a name has one token at the start of the text, of a line and after a space, and text decodes as it was
    dialogue = "Amy: Hi Ben!\nBen: Amy, hi.\n\nSummary: Amy greets Ben."
    for name in ("Amy", "Ben", "Summary"):
        alone = tokenizer(name, add_special_tokens=False).input_ids
        assert tokenizer(f"and {name}", add_special_tokens=False).input_ids[-len(alone):] == alone
        assert tokenizer(f"hi.\n{name}", add_special_tokens=False).input_ids[-len(alone):] == alone
    assert tokenizer.decode(tokenizer(dialogue).input_ids, skip_special_tokens=True).strip() == dialogue


@pytest.mark.slow
def test_tiny_gpt2_learns_by_next_token_prediction(corpus_file, tmp_path):
    from transformers import AutoModelForCausalLM

    metrics = pretrain(PretrainConfig(corpus=str(corpus_file), out=str(tmp_path / "gpt2"), arch="gpt2", max_steps=20, lr=3e-3, **TINY))
    assert metrics["objective"] == "next-token prediction"
    assert metrics["final_loss"] < metrics["first_loss"] - 0.5
    assert 20 * 8 * 63 < metrics["tokens_seen"] <= 20 * 8 * 64  # packed chunks: full but for the corpus's last
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2" / "model").config.n_positions == 128


@pytest.mark.slow
def test_copying_warm_up_forms_a_previous_token_head_and_is_recorded(corpus_file, tmp_path):
    """The warm-up's head targets are met (its previous-token head forms first, within tens of steps), and
    metrics.json and the summary carry its record; the model then pre-trains as usual and loads in transformers."""
    from transformers import AutoModelForCausalLM

    metrics = pretrain(PretrainConfig(corpus=str(corpus_file), out=str(tmp_path / "llama"), arch="llama", max_steps=2,
                                      copy_warmup_steps=50, lr=1e-2, **TINY))
    warm = metrics["copy_warmup"]
    assert warm["steps"] == 50 and warm["final_losses"]["previous_head"] < 0.5  # from ln(position) at the start
    assert 0 < warm["copy_ratio_after"] and 0 < warm["copy_ratio_before"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "llama" / "model").config.rope_parameters["rope_theta"] == 1e6


def test_induction_targets_point_after_the_previous_occurrence():
    from llmcycle.train.copy_warmup import induction_targets

    ids = torch.tensor([[5, 6, 7, 5, 6, 7, 5]])
    assert induction_targets(ids).tolist() == [[-1, -1, -1, 1, 2, 3, 4]]


def test_continuing_a_model_without_sentinels_adds_them(t5_dir, gpt2_dir, corpus_file, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    base = len(AutoTokenizer.from_pretrained(t5_dir))
    pretrain(PretrainConfig(corpus=str(corpus_file), out=str(tmp_path / "t5"), model=str(t5_dir), max_steps=2, batch_size=4, max_length=32))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "t5" / "model")
    assert len(tokenizer) == base + 100 and tokenizer.convert_tokens_to_ids("<extra_id_0>") == base
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5" / "model").get_input_embeddings().weight.shape[0] == base + 100
    metrics = pretrain(PretrainConfig(corpus=str(corpus_file), out=str(tmp_path / "gpt2"), model=str(gpt2_dir), max_steps=2, batch_size=4, max_length=32))
    assert metrics["objective"] == "next-token prediction" and np.isfinite(metrics["final_loss"])


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_same_weights(t5_run, tmp_path):
    """The t5 run, with its final model removed, resumed from its step-10 checkpoint, ends where it ended."""
    from safetensors.torch import load_file

    from llmcycle import config as configs

    out = tmp_path / "t5"
    shutil.copytree(t5_run[0], out)
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    cfg = configs.from_dict(PretrainConfig, configs.read_yaml(out / "config.yaml"), "config.yaml")
    cfg.out = str(out)
    metrics = pretrain(cfg, resume=True)
    whole, resumed = load_file(t5_run[0] / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    for key in whole:
        torch.testing.assert_close(whole[key], resumed[key], atol=1e-6, rtol=0)
    assert metrics["steps"] == 20 and metrics["final_loss"] == pytest.approx(t5_run[1]["final_loss"], abs=1e-5)
    assert len((out / "log.jsonl").read_text().splitlines()) == 20


@pytest.mark.parametrize(("changes", "message"), [
    ({"model": "some/model"}, "not both or neither"),
    ({"arch": None}, "not both or neither"),
    ({"corpus": "missing.txt"}, "does not exist"),
    ({"corpus": "empty.txt"}, "no text"),
    ({"noise_density": 1.5}, "--noise-density"),
    ({"objective": "masking"}, "--objective"),
    ({"arch": "llama", "objective": "span-corruption"}, "--objective span-corruption is for encoder-decoder models"),
    ({"arch": "t5", "vocab_size": 350}, "at least 400"),
    ({"arch": "gpt2", "max_length": 256}, "longer than --context"),
    ({"arch": "rnn"}, "unknown --arch 'rnn'; use one of t5, bart, gpt2, llama"),
    ({"batch_size": 0}, "--batch-size"),
    ({"copy_warmup_steps": 5}, "--copy-warmup-steps is for decoder-only models"),
    ({"copy_warmup_steps": -1}, "--copy-warmup-steps"),
])
def test_bad_input_is_a_one_line_error_and_writes_nothing(changes, message, corpus_file, tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    values = {"corpus": str(corpus_file), "out": str(tmp_path / "run"), "arch": "t5", **TINY} | changes
    if values["corpus"] in ("missing.txt", "empty.txt"):
        values["corpus"] = str(tmp_path / values["corpus"])
    with pytest.raises(UserError, match=message):
        pretrain(PretrainConfig(**values))
    assert not (tmp_path / "run").exists()


def test_refuses_a_used_folder_and_a_resume_without_checkpoints(corpus_file, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    cfg = PretrainConfig(corpus=str(corpus_file), out=str(tmp_path / "run"), arch="gpt2", max_steps=1, **TINY)
    with pytest.raises(UserError, match="not empty"):
        pretrain(cfg)
    with pytest.raises(UserError, match="no complete checkpoint"):
        pretrain(cfg, resume=True)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_copying_warm_up_runs_on_gpt2_and_restores_its_attention(corpus_file, tmp_path):
    """Another decoder-only family: its attention modules, its final norm (ln_f) and its attention implementation,
    switched to eager for the warm-up and back afterwards."""
    from llmcycle.train.copy_warmup import attention_modules, copy_warmup, final_norm
    from llmcycle.train.scratch import ScratchSpec, build_model, corpus_texts, train_tokenizer

    tokenizer = train_tokenizer(corpus_texts(str(corpus_file)), 500, append_eos=False)
    model = build_model(ScratchSpec(arch="gpt2", layers=2, hidden=64, heads=4, vocab_size=500, context=128, dropout=0.0), tokenizer)
    before = model.config._attn_implementation
    assert len(attention_modules(model)) == 2 and final_norm(model) is model.transformer.ln_f
    record = copy_warmup(model, tokenizer, steps=3, lr=1e-3, seed=0)
    assert record["steps"] == 3 and set(record["final_losses"]) == {"lm", "previous_head", "induction", "previous_read", "copy_read"}
    assert all(np.isfinite(value) for value in record["final_losses"].values())
    assert model.config._attn_implementation == before


@pytest.mark.slow
def test_a_resumed_run_keeps_its_copying_warm_up_record_without_running_it_again(corpus_file, tmp_path):
    from llmcycle import config as configs

    out = tmp_path / "llama"
    first = pretrain(PretrainConfig(corpus=str(corpus_file), out=str(out), arch="llama", max_steps=4, save_every=2,
                                    copy_warmup_steps=3, **TINY))
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    cfg = configs.from_dict(PretrainConfig, configs.read_yaml(out / "config.yaml"), "config.yaml")
    cfg.out = str(out)
    resumed = pretrain(cfg, resume=True)
    # the record holds the warm-up's wall time: run again, it would differ
    assert resumed["copy_warmup"] == first["copy_warmup"] and resumed["steps"] == 4
