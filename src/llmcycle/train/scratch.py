"""Models built from a config, with a tokenizer trained on your own text.

Nothing can be downloaded on an offline machine, so tests, benchmarks and the demo build their models here:
a byte-level BPE tokenizer trained on a corpus, and a randomly initialised T5, BART, GPT-2 or Llama of the
size asked for, saved with `save_pretrained` so every other verb loads it like any pretrained model.
(transformers can build models from configs but has no one-call "tokenizer + model from this text".)
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.io import read_rows
from ..errors import UserError
from ..outputs import publish, staging_beside
from .settings import Architecture

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<s>"]
ENCODER_DECODER: tuple[Architecture, ...] = ("t5", "bart")


@dataclass
class ScratchSpec:
    """The size of a model built from a config."""

    arch: Architecture = "gpt2"
    """t5, bart, gpt2 or llama."""
    layers: int = 2
    """Transformer blocks (encoder and decoder each, for t5 and bart)."""
    hidden: int = 64
    """Hidden size."""
    heads: int = 4
    """Attention heads."""
    vocab_size: int = 512
    """Tokens in the vocabulary the tokenizer is trained to."""
    context: int = 512
    """Context window in tokens."""
    dropout: float = 0.1
    """Dropout everywhere the architecture has it."""
    seed: int = 0
    """Seed of the random initialisation."""

    def validate(self) -> None:
        if self.arch not in typing.get_args(Architecture):
            raise UserError(f"unknown architecture '{self.arch}'; use one of {', '.join(typing.get_args(Architecture))}")
        for name in ("layers", "hidden", "heads", "vocab_size", "context"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.hidden % self.heads:
            raise UserError(f"--hidden {self.hidden} must be divisible by --heads {self.heads}")
        if self.vocab_size < 300:
            raise UserError("--vocab-size must be at least 300 (256 bytes plus merges and special tokens)")


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, append_eos: bool, same_word_tokens: bool = False):
    """A byte-level BPE tokenizer: any text encodes, nothing maps to <unk>.

    With `same_word_tokens`, a word at the start of the text or of a line gets the token it gets after a space
    ("Ann: hi" and "ask Ann" share 'ĠAnn'), as SentencePiece tokenizers (T5's, Llama's) give words one form.
    Without it (GPT-2's byte-level BPE), a model must learn that 'Ann' and 'ĠAnn' are one name before it can
    copy names from a dialogue into a summary, which a small model trained for minutes does not.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=same_word_tokens)
    tokenizer.decoder = decoders.ByteLevel()
    if same_word_tokens:
        tokenizer.normalizer = normalizers.Replace("\n", "\n ")
        tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("\n ", "\n")])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    if append_eos:  # encoder inputs end with </s>, as T5's and BART's tokenizers do
        eos = tokenizer.token_to_id("</s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", eos)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )


def build_model(spec: ScratchSpec, tokenizer):
    """A randomly initialised model of `spec.arch` whose special token ids match `tokenizer`."""
    import transformers as tf

    spec.validate()
    torch.manual_seed(spec.seed)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    vocab = len(tokenizer)
    if spec.arch == "t5":
        config = tf.T5Config(
            vocab_size=vocab, d_model=spec.hidden, d_kv=spec.hidden // spec.heads, d_ff=spec.hidden * 4,
            num_layers=spec.layers, num_heads=spec.heads, decoder_start_token_id=tokenizer.pad_token_id,
            feed_forward_proj="gated-gelu", dropout_rate=spec.dropout, **ids,
        )
        return tf.T5ForConditionalGeneration(config)  # T5's own set-up: tied embeddings, decoder output scaled by d^-0.5
    if spec.arch == "bart":
        config = tf.BartConfig(
            vocab_size=vocab, d_model=spec.hidden, encoder_layers=spec.layers, decoder_layers=spec.layers,
            encoder_attention_heads=spec.heads, decoder_attention_heads=spec.heads, encoder_ffn_dim=spec.hidden * 4,
            decoder_ffn_dim=spec.hidden * 4, max_position_embeddings=spec.context,
            decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=None, dropout=spec.dropout,
            attention_dropout=spec.dropout, activation_dropout=spec.dropout, **ids,
        )
        return tf.BartForConditionalGeneration(config)
    if spec.arch == "gpt2":
        config = tf.GPT2Config(
            vocab_size=vocab, n_embd=spec.hidden, n_layer=spec.layers, n_head=spec.heads, n_positions=spec.context,
            resid_pdrop=spec.dropout, embd_pdrop=spec.dropout, attn_pdrop=spec.dropout, **ids,
        )
        return tf.GPT2LMHeadModel(config)
    config = tf.LlamaConfig(
        vocab_size=vocab, hidden_size=spec.hidden, intermediate_size=spec.hidden * 3, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=max(1, spec.heads // 2),
        max_position_embeddings=spec.context, attention_dropout=spec.dropout,
        # slowly turning rotary dimensions let a head match content at any distance, which copying needs (Qwen2's
        # base; Llama 3 uses 5e5, Llama 2 1e4); the copying warm-up (copy_warmup.py) was measured with it
        rope_theta=1e6, **ids,
    )
    return tf.LlamaForCausalLM(config)


def init_model(texts: list[str], out: str | Path, spec: ScratchSpec) -> Path:
    """Train a tokenizer on `texts`, build a model of `spec`, and save both to `out` (save_pretrained layout)."""
    spec.validate()
    if not texts:
        raise UserError("the corpus holds no text to train a tokenizer on")
    tokenizer = train_tokenizer(texts, spec.vocab_size, append_eos=spec.arch in ENCODER_DECODER, same_word_tokens=True)
    tokenizer.model_max_length = spec.context
    model = build_model(spec, tokenizer)
    out = Path(out)
    with staging_beside(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        publish(staging, out)  # the CLI has checked that `out` is absent or empty
    return out


def corpus_texts(path: str | Path) -> list[str]:
    """Lines of a .txt file, or every string field of the rows of a data file."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise UserError(f"corpus {path} does not exist")
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows, _ = read_rows(str(path))
    return [value for row in rows for value in row.values.values() if isinstance(value, str) and value.strip()]
