"""Pre-training on plain text: denoising for encoder-decoder models, next-token prediction for decoder-only.

The lifecycle's first stage, and how llmcycle builds its own embedded models offline. The model is an existing
one (continued pre-training) or one built from a config with a tokenizer trained on the corpus (scratch.py).
- Encoder-decoder (T5, BART), `objective`:
  span-corruption (default), T5's (Raffel et al. 2020, section 3.1.4): about 15% of a chunk's tokens, in spans of
  mean length 3, are each replaced by one sentinel token <extra_id_i> in the encoder input; the decoder predicts
  each sentinel followed by the tokens it hid.
  text-infilling, BART's (Lewis et al. 2020, section 2.2): about 30% of the tokens, in spans, each span replaced by
  one mask token; the decoder writes the whole chunk back. Most of its targets are copies of the input, which is
  what teaches a small model to copy names and facts from its input (span corruption's targets are mostly not in
  the input), at the price of a decoder as long as the chunk. Span lengths are drawn as for span corruption
  (uniform parts of the masked share, mean length mean_span_length) rather than BART's Poisson(3), so there are
  no zero-length spans; the mask is the tokenizer's mask token, or <extra_id_0> when it has none (T5).
  mixed: each chunk is drawn one of the two, with even odds.
  The noise is drawn per chunk from a generator seeded by (seed, epoch, chunk), so a resumed run sees the same
  inputs as an uninterrupted one.
- Decoder-only (GPT-2, Llama, ...): next-token prediction; or, with objective text-infilling, each row is the
  noisy chunk, EOS, then the chunk itself, with the loss on the chunk only (mixed: half the chunks so, half plain
  next-token prediction). Chunks are then (max_length - 2) / 2 tokens, so that a row fits max_length.
  Copying from the context is the task of induction heads. Next-token prediction on this project's small corpus
  never formed them in the embedded Llama (on a random sequence repeated twice, the second copy's loss was no
  lower than the first's), and neither did one epoch of text infilling (bench/RESULTS.md). `copy_warmup_steps`
  runs copy_warmup.py's warm-up first, which forms them by supervising two heads.
The corpus is tokenised once and packed into chunks of max_length tokens, documents separated by EOS (as T5
and GPT-2 were trained), so batches are full and nothing is padded. The loop is finetune.py's: AdamW, warm-up
then linear decay, clipping, checkpoints that resume exactly, log.jsonl and metrics.json.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import above, at_least, check_fields
from ..console import note
from ..errors import UserError
from ..models import context_window, load_base, locate
from .copy_warmup import copy_warmup
from .distributed import Distributed, DistributedSettings
from .finetune import train_step
from .run import Optimization, StepResult, Trainer, peak_memory_bytes, run_training, summary_table
from .scratch import ENCODER_DECODER, ScratchSpec, build_model, corpus_texts, train_tokenizer
from .settings import Architecture, RunSettings
from .sft_data import IGNORE, Tokenized, collate, epoch_batches

SENTINELS = [f"<extra_id_{i}>" for i in range(100)]
DEFAULT_DENSITY = {"span-corruption": 0.15, "text-infilling": 0.3}
RECENT = 10  # final_loss is the mean of this many last steps: one step's loss is noisy


@dataclass
class PretrainConfig(RunSettings, DistributedSettings):
    """Everything that defines a pre-training run; saved as DIR/config.yaml."""

    corpus: str = ""
    """Text to train on: .txt (a document a line) or a data file (each string field is a document)."""
    out: str = ""
    """Run folder to write."""
    model: str | None = None
    """Model to continue pre-training (folder, run folder or hub id); or build a new one with arch."""
    arch: Architecture | None = None
    """Build a new model: t5, bart, gpt2 or llama, with a byte-level BPE tokenizer trained on the corpus."""
    layers: int = 4
    """New model: layers (encoder and decoder each, for t5 and bart)."""
    hidden: int = 256
    """New model: hidden size."""
    heads: int = 4
    """New model: attention heads."""
    vocab_size: int = 8000
    """New model: vocabulary size, including 100 sentinel tokens for t5 and bart."""
    context: int = 512
    """New model: context window in tokens."""
    dropout: float = at_least(0.0, 0, below=1)
    """New model: dropout (none is usual for pre-training on a single pass)."""
    max_steps: int | None = at_least(None, 1)
    """Optimizer steps to run; overrides epochs."""
    epochs: int = at_least(1, 1)
    """Passes over the corpus (unless max_steps is set)."""
    batch_size: int = at_least(16, 1)
    """Chunks per step."""
    lr: float | None = above(None, 0)
    """Peak learning rate; default 1e-3 for a new model, 1e-4 to continue one."""
    warmup_steps: int | None = at_least(None, 0)
    """Steps of linear warm-up before the linear decay to 0; default a twentieth of the steps."""
    weight_decay: float = at_least(0.01, 0)
    """AdamW weight decay."""
    max_grad_norm: float = at_least(1.0, 0)
    """Gradient clipping norm (0 disables clipping)."""
    max_length: int = at_least(128, 4)
    """Tokens per chunk of the packed corpus (before span corruption, which shortens the encoder input); for a
    decoder-only model on text infilling, tokens per row (noisy chunk and chunk)."""
    objective: Literal["span-corruption", "text-infilling", "mixed"] | None = None
    """Encoder-decoder: span-corruption (T5's, the default), text-infilling (BART's: the decoder writes the whole
    chunk back, which teaches copying from the input) or mixed (each chunk one of the two). Decoder-only:
    next-token prediction (the default), text-infilling (the noisy chunk, then the chunk) or mixed."""
    noise_density: float | None = above(None, 0, below=1)
    """Share of each chunk's tokens that is masked; default 0.15 for span corruption, 0.3 for text infilling (the
    papers' values)."""
    mean_span_length: float = at_least(3.0, 1)
    """Mean length of a masked span."""
    copy_warmup_steps: int = at_least(0, 0)
    """Decoder-only: steps of the copying warm-up before pre-training (copy_warmup.py: repeated random sequences,
    with targets for where two heads attend, so that the model copies from its context); 0 skips it."""
    log_every: int = at_least(1, 1)
    """Write a log.jsonl line every N steps."""

    def validate(self) -> None:
        check_fields(self, required=("corpus", "out"))
        if bool(self.model) == bool(self.arch):
            raise UserError("give either --model (continue pre-training it) or --arch (build a new model), not both or neither")
        if self.arch:
            self.spec().validate()
            if self.arch in ENCODER_DECODER and self.vocab_size < 400:
                raise UserError(f"--vocab-size must be at least 400 for {self.arch} (100 of it are sentinel tokens)")
            if self.objective == "span-corruption" and self.arch not in ENCODER_DECODER:
                raise UserError(f"--objective span-corruption is for encoder-decoder models (t5, bart); {self.arch} takes text-infilling or mixed")
            if self.copy_warmup_steps and self.arch in ENCODER_DECODER:
                raise UserError(f"--copy-warmup-steps is for decoder-only models (gpt2, llama), not {self.arch}")
            if self.max_length > self.context:
                raise UserError(f"--max-length {self.max_length} is longer than --context {self.context}")
        self.validate_distributed()

    def spec(self) -> ScratchSpec:
        return ScratchSpec(arch=self.arch or "", layers=self.layers, hidden=self.hidden, heads=self.heads,
                           vocab_size=self.vocab_size, context=self.context, dropout=self.dropout, seed=self.seed)

    def density(self, objective: str) -> float:
        """The noise density of `objective` (span-corruption or text-infilling) in this run."""
        return self.noise_density if self.noise_density is not None else DEFAULT_DENSITY[objective]

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.arch else 1e-4)


# ---------------------------------------------------------------- span corruption


def _positive_parts(total: int, parts: int, rng: np.random.Generator) -> list[int]:
    """`total` split at random into `parts` lengths of at least 1."""
    cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False) + 1) if parts > 1 else np.array([], dtype=int)
    return np.diff(np.concatenate([[0], cuts, [total]])).tolist()


def noise_mask(length: int, noise_density: float, mean_span_length: float, max_spans: int, rng: np.random.Generator) -> list[bool]:
    """Which of `length` tokens to mask: round(length * density) of them, in round(noise / mean_span) spans.

    Unlike T5's code, the chunk may start or end with a masked span; spans are separated by at least one token.
    """
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(1, min(round(noise / mean_span_length), max_spans, length - noise + 1))
    noise_lengths = _positive_parts(noise, spans, rng)
    # spans + 1 runs of kept tokens: the two ends may be empty (drawn one longer, then shortened), the others not
    kept = _positive_parts(length - noise + 2, spans + 1, rng)
    kept = [kept[0] - 1, *kept[1:-1], kept[-1] - 1]
    mask: list[bool] = []
    for run, span in zip(kept, noise_lengths):
        mask += [False] * run + [True] * span
    return mask + [False] * kept[-1]


def span_corruption(ids: list[int], sentinels: list[int], eos: list[int], noise_density: float, mean_span_length: float,
                    rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(encoder input, decoder target): each masked span becomes sentinel i in the input, and the target is
    sentinel i followed by the span's tokens, for every span in order; both end with `eos` ([] or [EOS id])."""
    mask = noise_mask(len(ids), noise_density, mean_span_length, len(sentinels), rng)
    inputs, targets, span = [], [], -1
    for i, (token, masked) in enumerate(zip(ids, mask)):
        if not masked:
            inputs.append(token)
            continue
        if i == 0 or not mask[i - 1]:
            span += 1
            inputs.append(sentinels[span])
            targets.append(sentinels[span])
        targets.append(token)
    return inputs + eos, targets + eos


def text_infilling(ids: list[int], mask_id: int, eos: list[int], noise_density: float, mean_span_length: float,
                   rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(encoder input, decoder target): each masked span becomes one `mask_id` in the input, and the target is
    the whole chunk; both end with `eos` ([] or [EOS id])."""
    mask = noise_mask(len(ids), noise_density, mean_span_length, len(ids), rng)
    inputs = [mask_id if masked else token for i, (token, masked) in enumerate(zip(ids, mask))
              if not (masked and i > 0 and mask[i - 1])]
    return inputs + eos, list(ids) + eos


# ---------------------------------------------------------------- setup


def sentinel_ids(tokenizer) -> list[int]:
    """Ids of <extra_id_0>, <extra_id_1>, ... as far as the tokenizer has them."""
    vocab = tokenizer.get_vocab()
    ids = []
    for token in SENTINELS:
        if token not in vocab:
            break
        ids.append(vocab[token])
    return ids


def setup_model(cfg: PretrainConfig, texts: list[str]):
    """(model, tokenizer, is_encoder_decoder): the given model, or one built new."""
    if cfg.model:
        source = locate(cfg.model)
        if source.adapters:
            raise UserError(f"{cfg.model} is an adapter; merge it first (llmcycle merge) or pre-train its base")
        loaded = load_base(source.base, torch_dtype=torch.float32)
        model, tokenizer, is_seq2seq = loaded.model, loaded.tokenizer, loaded.is_encoder_decoder
        if is_seq2seq and not sentinel_ids(tokenizer):
            tokenizer.add_special_tokens({"additional_special_tokens": SENTINELS})
            model.resize_token_embeddings(len(tokenizer))
            note(f"the tokenizer had no sentinel tokens; added {len(SENTINELS)} (<extra_id_0> ...) and resized the embeddings")
    else:
        is_seq2seq = cfg.arch in ENCODER_DECODER
        sentinels = len(SENTINELS) if is_seq2seq else 0
        tokenizer = train_tokenizer(texts, cfg.vocab_size - sentinels, append_eos=is_seq2seq, same_word_tokens=True)
        if is_seq2seq:
            tokenizer.add_special_tokens({"additional_special_tokens": SENTINELS})
        tokenizer.model_max_length = cfg.context
        model = build_model(cfg.spec(), tokenizer)
    if not is_seq2seq and cfg.objective in ("text-infilling", "mixed") and tokenizer.mask_token_id is None:
        tokenizer.add_special_tokens({"mask_token": "<mask>"})
        model.resize_token_embeddings(len(tokenizer))
        note("the tokenizer had no mask token; added <mask> for text infilling and resized the embeddings")
    window = context_window(model.config, None)  # the model's own window, not its tokenizer's
    if window is not None and cfg.max_length > window:
        raise UserError(f"--max-length {cfg.max_length} is longer than the model's context window ({window})")
    return model.float().train(), tokenizer, is_seq2seq


def pack_corpus(texts: list[str], tokenizer, chunk_length: int) -> tuple[list[list[int]], int]:
    """(chunks of `chunk_length` tokens of the documents joined by EOS; the corpus's token count)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        stream.extend(ids + eos)
    chunks = [stream[start : start + chunk_length] for start in range(0, len(stream), chunk_length)]
    return [chunk for chunk in chunks if len(chunk) >= 2], len(stream)


def row_maker(cfg: PretrainConfig, tokenizer, is_seq2seq: bool):
    """fn(chunk ids, rng) -> the training row of that chunk under the run's objective."""
    sentinels, eos = sentinel_ids(tokenizer), [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else (sentinels or [None])[0]
    plain = "span-corruption" if is_seq2seq else "next-token"
    objective, span = cfg.objective or plain, cfg.mean_span_length

    def make(ids: list[int], rng: np.random.Generator) -> Tokenized:
        chosen = objective if objective != "mixed" else ("text-infilling" if rng.random() < 0.5 else plain)
        if chosen == "next-token":
            return Tokenized(ids, ids)
        if chosen == "span-corruption":
            return Tokenized(*span_corruption(ids, sentinels, eos, cfg.density(chosen), span, rng))
        noisy, whole = text_infilling(ids, mask_id, eos, cfg.density(chosen), span, rng)
        return Tokenized(noisy, whole) if is_seq2seq else Tokenized(noisy + whole, [IGNORE] * len(noisy) + whole)

    return make


def chunk_length(cfg: PretrainConfig, is_seq2seq: bool) -> int:
    """Tokens per chunk, so that a training row fits max_length (EOS included)."""
    if is_seq2seq:
        return cfg.max_length - 1
    return (cfg.max_length - 2) // 2 if cfg.objective in ("text-infilling", "mixed") else cfg.max_length


def make_batches(chunks: list[list[int]], cfg: PretrainConfig, tokenizer, is_seq2seq: bool, dist: Distributed):
    """This process's part of batch `i` of the run (across epochs), its loss weight and the tokens of the whole
    batch; and the batches per epoch. The same for a fresh and a resumed run."""
    global_batch = cfg.batch_size * dist.world_size
    per_epoch = math.ceil(len(chunks) / global_batch)
    make = row_maker(cfg, tokenizer, is_seq2seq)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batch(index: int) -> tuple[dict[str, torch.Tensor], float, int]:
        epoch, position = divmod(index, per_epoch)
        every = epoch_batches(len(chunks), global_batch, cfg.seed, epoch)[position]
        chosen, weight = dist.shard(every)
        rows = [make(chunks[i], np.random.default_rng([cfg.seed, epoch, i])) for i in chosen]
        return collate(rows, pad_id, is_seq2seq), weight, sum(len(chunks[i]) for i in every)

    return batch, per_epoch


# ---------------------------------------------------------------- the run


def pretrain(cfg: PretrainConfig, resume: bool = False) -> dict:
    """Run `cfg`; returns the metrics written to DIR/metrics.json. With num_processes > 1, starts the processes."""
    return run_training(["pretrain"], cfg, resume, PretrainTrainer)


class PretrainTrainer(Trainer):
    """Model, corpus, step and metrics of pre-training on a packed corpus."""

    description = "pre-training"
    cfg: PretrainConfig

    def build(self) -> torch.nn.Module:
        cfg, dist = self.cfg, self.dist
        texts = corpus_texts(cfg.corpus)
        if not texts:
            raise UserError(f"corpus {cfg.corpus} holds no text")
        model, self.tokenizer, self.is_seq2seq = setup_model(cfg, texts)
        if cfg.objective == "span-corruption" and not self.is_seq2seq:
            raise UserError(f"--objective span-corruption is for encoder-decoder models; this {model.config.model_type} "
                            "model is decoder-only (it takes text-infilling or mixed)")
        self.warmup = None
        if cfg.copy_warmup_steps and not self.resuming:  # a resumed run's weights hold the warm-up already
            self.warmup = copy_warmup(model, self.tokenizer, cfg.copy_warmup_steps, cfg.learning_rate, cfg.seed)
        chunks, self.corpus_tokens = pack_corpus(texts, self.tokenizer, chunk_length(cfg, self.is_seq2seq))
        if not chunks:
            raise UserError(f"corpus {cfg.corpus} has fewer than 2 tokens")
        self.documents, self.chunks, self.model_type = len(texts), len(chunks), model.config.model_type
        self.batch_of, self.per_epoch = make_batches(chunks, cfg, self.tokenizer, self.is_seq2seq, dist)
        self.total_steps = cfg.max_steps or self.per_epoch * cfg.epochs
        self.max_grad_norm = cfg.max_grad_norm
        plain = "span corruption" if self.is_seq2seq else "next-token prediction"
        self.objective = {"text-infilling": "text infilling", "mixed": f"{plain} + text infilling"}.get(cfg.objective, plain)
        return model

    def optimization(self) -> Optimization:
        cfg = self.cfg
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else self.total_steps // 20
        return Optimization(cfg.learning_rate, cfg.weight_decay, warmup_steps=warmup)

    def announce(self) -> None:
        cfg, dist = self.cfg, self.dist
        note(f"{self.objective} on {self.model_type}, {self.total_params:,} parameters; {self.documents} documents, "
             f"{self.corpus_tokens:,} tokens in {self.chunks} chunks; {self.total_steps} steps of {cfg.batch_size * dist.world_size}"
             + (f", {dist.describe()}" if dist.enabled else ""))

    def initial_state(self) -> dict:
        return {"tokens": 0, "first_loss": None, "recent_losses": [], "copy_warmup": self.warmup}  # kept on resume

    def step(self, step: int, state: dict) -> StepResult:
        batch, weight, tokens = self.batch_of(step - 1)
        device = next(self.model.parameters()).device
        value, _, _ = train_step(self.model, [batch], self.is_seq2seq, device, contextlib.nullcontext, self.dist, [weight])
        state.update(tokens=state["tokens"] + tokens, recent_losses=[*state["recent_losses"], value][-RECENT:],
                     first_loss=state["first_loss"] if state["first_loss"] is not None else value)
        return StepResult(value, per_second={"tokens_per_second": tokens})

    def final_metrics(self, state: dict, dist: Distributed) -> dict:
        return {
            "objective": self.objective, "model_type": self.model_type, "first_loss": state["first_loss"],
            "final_loss": sum(state["recent_losses"]) / len(state["recent_losses"]), "last_step_loss": state["last_loss"],
            "steps": state["step"], "epochs": round(state["step"] / self.per_epoch, 4), "world_size": dist.world_size,
            "tokens_seen": state["tokens"], "tokens_per_second": state["tokens"] / max(state["train_seconds"], 1e-9),
            "wall_time_s": state["train_seconds"], "total_params": self.total_params, "corpus_documents": self.documents,
            "corpus_tokens": self.corpus_tokens, "peak_memory_bytes": peak_memory_bytes(next(self.model.parameters()).device),
            **({"copy_warmup": state["copy_warmup"]} if state.get("copy_warmup") else {}),
        }

    def summary(self, metrics: dict, weights_dir: Path) -> None:
        summary_table("pre-training", [
            ("objective", f"{metrics['objective']} ({metrics['model_type']})"),
            ("parameters", f"{metrics['total_params']:,}"),
            *([("copying warm-up", f"{warm['steps']} steps, copy ratio {warm['copy_ratio_before']:.2f} -> "
                                   f"{warm['copy_ratio_after']:.2f}")] if (warm := metrics.get("copy_warmup")) else []),
            ("loss", f"{metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f} (mean of the last steps)"),
            ("steps (epochs)", f"{metrics['steps']} ({metrics['epochs']:g})"),
            ("tokens seen", f"{metrics['tokens_seen']:,}"),
            ("tokens/s", f"{metrics['tokens_per_second']:,.0f}"),
            ("wall time", f"{metrics['wall_time_s']:.1f} s"),
            ("size on disk", f"{metrics['size_on_disk_bytes'] / 2**20:,.2f} MiB ({weights_dir})"),
        ])
