"""Log-likelihood of each choice of a multiple-choice item, the way lm-evaluation-harness 0.4 computes it.

Prompt layout and tokenisation follow lm-eval's `multiple_choice` tasks, so picks are comparable:
- context = the K shots, each `question + " " + its answer's text`, joined by blank lines, then the question;
  continuation = `" " + choice`. `--scoring letter` lists the choices as `A. ...` lines under the question,
  ends with `Answer:` and scores the letters (lm-eval's `mmlu` layout, with its description line).
- trailing spaces of the context move to the continuation; decoder-only models tokenise context + continuation
  together and score the tokens past the context's own encoding; encoder-decoder models encode the context
  (with the tokenizer's defaults, so T5 ends it with EOS) and score the continuation (no special tokens) as the
  decoder's labels. No BOS or EOS is added by hand.

We write the scoring ourselves instead of calling lm-eval because it must run on our loaded model (adapters,
run folders) without lm-eval installed, and batch by item: the choices of a question share their context.
A decoder-only model reads each context once and continues every choice from its key/value cache; an
encoder-decoder model encodes each context once and decodes every choice against it. Models whose adapters
prepend virtual tokens (prompt and prefix tuning) score every (context, choice) sequence in full instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..console import progress
from ..errors import UserError
from ..models import LoadedModel, cache_argument
from .suites import LETTERS, Item, Suite

SHOT_DELIMITER = "\n\n"
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class Encoded:
    """One item's context and choices as token ids."""

    context: list[int]
    choices: list[list[int]]


def item_text(item: Item, scoring: str) -> str:
    if scoring == "letter":
        listed = "".join(f"{LETTERS[i]}. {choice}\n" for i, choice in enumerate(item.choices))
        return f"{item.question.strip()}\n{listed}Answer:"
    return item.question


def item_targets(item: Item, scoring: str) -> list[str]:
    """What is scored after the context, without the delimiter: the choices' text, or their letters."""
    return list(LETTERS[: len(item.choices)]) if scoring == "letter" else list(item.choices)


def render_context(item: Item, shots: list[Item], scoring: str) -> str:
    """The K solved shots, then the item; with letter scoring, lm-eval's mmlu description first."""
    solved = [item_text(s, scoring) + TARGET_DELIMITER + item_targets(s, scoring)[s.answer] for s in shots]
    text = SHOT_DELIMITER.join([*solved, item_text(item, scoring)])
    if scoring == "letter":
        about = f" about {item.subject.replace('_', ' ')}" if item.subject != "all" else ""
        text = f"The following are multiple choice questions (with answers){about}.{SHOT_DELIMITER}" + text
    return text


def _encode(tokenizer, text: str, add_special_tokens: bool | None = None) -> list[int]:
    if add_special_tokens is None:
        prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        # lm-eval leaves special tokens out of a string that already starts with the prefix token.
        if prefix_id is not None and text.startswith(tokenizer.decode(prefix_id)):
            add_special_tokens = False
    kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    return tokenizer.encode(text, **kwargs)


def encode_pair(loaded: LoadedModel, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: the context's trailing spaces move to the continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    tokenizer = loaded.tokenizer
    if loaded.is_encoder_decoder:
        return _encode(tokenizer, context), _encode(tokenizer, continuation, add_special_tokens=False)
    whole, context_ids = _encode(tokenizer, context + continuation), _encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def encode_items(loaded: LoadedModel, items: list[Item], contexts: list[str], scoring: str) -> list[Encoded]:
    """Token ids of every item; one whose context and longest choice do not fit the model is a user error."""
    window = loaded.context_window
    encoded = []
    for item, context in zip(items, contexts):
        pairs = [encode_pair(loaded, context, TARGET_DELIMITER + target) for target in item_targets(item, scoring)]
        entry = Encoded(pairs[0][0], [choice for _, choice in pairs])
        if any(not choice for choice in entry.choices):
            raise UserError(f"{item.where}: field 'choices': a choice encodes to no tokens after the context")
        longest = max(map(len, entry.choices))
        length = len(entry.context) if loaded.is_encoder_decoder else len(entry.context) + longest - 1
        if window is not None and max(length, longest) > window:
            raise UserError(f"{item.where}: field 'question': the context is {len(entry.context)} tokens (with its shots), "
                            f"more than the model's context window of {window}; use fewer --shots")
        encoded.append(entry)
    return encoded


def _pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences])


def _mask(sequences: list[list[int]]) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])


def _gather(logprobs: torch.Tensor, targets: list[list[int]]) -> list[float]:
    """Summed log-probabilities of each row's targets; logprobs (rows, positions, vocab), row r scores targets[r]."""
    labels = _pad(targets, 0).to(logprobs.device)  # (rows, positions)
    picked = logprobs[:, : labels.shape[1]].gather(2, labels.unsqueeze(-1)).squeeze(-1)
    return (picked * _mask(targets).to(picked.device)).sum(dim=1).tolist()


def _prompt_learning(loaded: LoadedModel) -> bool:
    config = getattr(loaded.model, "peft_config", None)
    return bool(config) and any(getattr(c, "is_prompt_learning", False) for c in config.values())


def _rows(batch: list[Encoded]) -> tuple[list[int], list[list[int]]]:
    """Item index of each choice row, and the rows' continuation ids."""
    owners = [i for i, entry in enumerate(batch) for _ in entry.choices]
    return owners, [choice for entry in batch for choice in entry.choices]


def _score_seq2seq(loaded: LoadedModel, batch: list[Encoded]) -> list[float]:
    """Encode each context once; decode every choice against its context's encoder states."""
    device, model = loaded.device, loaded.model
    owners, targets = _rows(batch)
    contexts = [entry.context for entry in batch]
    mask = _mask(contexts).to(device)
    index = torch.tensor(owners, device=device)
    labels = _pad(targets, 0).to(device)
    if _prompt_learning(loaded):
        logits = model(input_ids=_pad(contexts, 0).to(device)[index], attention_mask=mask[index], labels=labels).logits
    else:
        states = model.get_encoder()(input_ids=_pad(contexts, 0).to(device), attention_mask=mask).last_hidden_state
        logits = model(encoder_outputs=(states[index],), attention_mask=mask[index], labels=labels).logits
    return _gather(torch.log_softmax(logits.float(), dim=-1), targets)


def _score_causal_full(loaded: LoadedModel, batch: list[Encoded]) -> list[float]:
    """Every (context, choice) sequence in full, right-padded; as lm-eval computes it."""
    device = loaded.device
    owners, targets = _rows(batch)
    inputs = [(batch[o].context + t)[:-1] for o, t in zip(owners, targets)]
    padded = _pad(inputs, 0).to(device)
    logits = loaded.model(input_ids=padded, attention_mask=_mask(inputs).to(device)).logits
    virtual = logits.shape[1] - padded.shape[1]  # prompt tuning prepends virtual tokens to the logits
    starts = [virtual + len(batch[o].context) - 1 for o in owners]
    width = max(map(len, targets))
    picked = torch.stack([torch.nn.functional.pad(logits[r, s : s + len(t)], (0, 0, 0, width - len(t)))
                          for r, (s, t) in enumerate(zip(starts, targets))])  # (rows, width, vocab)
    return _gather(torch.log_softmax(picked.float(), dim=-1), targets)


def _score_causal_cached(loaded: LoadedModel, batch: list[Encoded]) -> list[float]:
    """Read each context once (right-padded), then continue every choice from the context's key/value cache."""
    device, model = loaded.device, loaded.model
    owners, targets = _rows(batch)
    contexts = [entry.context for entry in batch]
    context_mask = _mask(contexts).to(device)
    first = model(input_ids=_pad(contexts, 0).to(device), attention_mask=context_mask, use_cache=True)
    lengths = torch.tensor([len(c) for c in contexts], device=device)
    index = torch.tensor(owners, device=device)
    last = first.logits[torch.arange(len(batch), device=device), lengths - 1][index]  # (rows, vocab): first choice token
    cache = first.cache if hasattr(first, "cache") else first.past_key_values
    if not hasattr(cache, "batch_select_indices"):  # a cache that cannot be copied per choice: score in full
        return _score_causal_full(loaded, batch)
    cache.batch_select_indices(index)
    inputs = [t[:-1] for t in targets]
    if max(map(len, inputs)) == 0:
        return _gather(torch.log_softmax(last.float(), dim=-1)[:, None], targets)
    width = max(map(len, inputs))
    positions = lengths[index][:, None] + torch.arange(width, device=device)[None]
    mask = torch.cat([context_mask[index], _mask(inputs).to(device)], dim=1)
    rest = model(input_ids=_pad(inputs, 0).to(device), attention_mask=mask, position_ids=positions, **{cache_argument(model): cache}).logits
    logits = torch.cat([last[:, None], rest], dim=1)  # (rows, 1 + width, vocab)
    return _gather(torch.log_softmax(logits.float(), dim=-1), targets)


@torch.inference_mode()
def loglikelihoods(loaded: LoadedModel, encoded: list[Encoded], batch_size: int, description: str = "scoring") -> list[np.ndarray]:
    """Summed log-likelihood of every choice of every item; `batch_size` items (all their choices) per forward."""
    if loaded.is_encoder_decoder:
        scorer = _score_seq2seq
    else:
        scorer = _score_causal_full if _prompt_learning(loaded) else _score_causal_cached
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].context))  # similar lengths together
    result: list[np.ndarray] = [np.zeros(0)] * len(encoded)
    with progress() as bar:
        task = bar.add_task(description, total=len(encoded))
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            values = scorer(loaded, [encoded[i] for i in chosen])
            offset = 0
            for i in chosen:
                count = len(encoded[i].choices)
                result[i] = np.array(values[offset : offset + count])
                offset += count
            bar.advance(task, len(chosen))
    return result


@dataclass
class SuiteScores:
    """One model's log-likelihoods for every choice of every item."""

    items: list[Item]
    loglikelihoods: list[np.ndarray]
    scoring: str

    def predictions(self, normalised: bool = False) -> np.ndarray:
        """Index of the chosen choice per item; normalised divides by the scored text's length in characters."""
        picks = []
        for item, lls in zip(self.items, self.loglikelihoods):
            lengths = np.array([len(t) for t in item_targets(item, self.scoring)], dtype=np.float64)
            picks.append(int(np.argmax(lls / lengths if normalised else lls)))
        return np.array(picks)

    def correct(self) -> dict[str, np.ndarray]:
        answers = np.array([item.answer for item in self.items])
        return {"acc": (self.predictions() == answers).astype(np.float64),
                "acc_norm": (self.predictions(True) == answers).astype(np.float64)}


def score_model(loaded: LoadedModel, suite: Suite, shots: list[list[Item]], scoring: str, batch_size: int,
                description: str = "scoring") -> SuiteScores:
    """Every choice's log-likelihood for each item of `suite`, after that item's shots."""
    contexts = [render_context(item, item_shots, scoring) for item, item_shots in zip(suite.items, shots)]
    encoded = encode_items(loaded, suite.items, contexts, scoring)
    return SuiteScores(suite.items, loglikelihoods(loaded, encoded, batch_size, description), scoring)
