"""Next tokens from the running batch's logits, each row by its own request's settings.

A row's scores go through the logits processors `generate()` builds from the model's generation config for the
request's settings (so temperature 0 gives `llmcycle generate`'s tokens); when sampling, the token is drawn with a
torch.Generator of the row's own, seeded from the request, so a seeded answer does not depend on what else is in
the batch. A further per-row step (a penalty, a grammar) is one more processor in a row's list; whatever a client
may ask of the scores (log-probabilities) is read where `next_tokens` has them.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import torch
from transformers import MinNewTokensLengthLogitsProcessor

from ...generate.penalties import OpenAIPenalties
from ...generate.settings import GenerationSettings
from ...generate.structured import Grammars, RowMatcher
from ...models import LoadedModel, unwrap_peft
from .jobs import Job


@dataclass
class RowSampling:
    """How one row picks its tokens: logits processors (shared by a job's choices; empty for plain argmax) and,
    when sampling, a generator of its own."""

    processors: list
    generator: torch.Generator | None
    matcher: RowMatcher | None = None  # the row's place in its grammar (structured outputs)


class Sampler:
    """Builds each row's RowSampling and picks the next token of every row."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.device = loaded.device
        self.greedy_plain: bool | None = None  # whether greedy decoding needs no logits processors
        self._grammars: Grammars | None = None
        self._grammars_made = threading.Lock()  # asked for by the HTTP thread (checks) and the engine's
        eos = loaded.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}

    def for_job(self, job: Job, device: torch.device) -> list[RowSampling]:
        """One RowSampling per choice of `job`; generators live on `device`, where the logits are."""
        processors = self._processors(job)
        constraint = job.params.constraint
        return [RowSampling(processors, self._generator(job, choice, device),
                            self.grammars().matcher(constraint) if constraint is not None else None)
                for choice in range(job.params.n)]

    @torch.inference_mode()
    def next_tokens(self, rows: list, logits: torch.Tensor) -> list[int]:
        """One token per row (each with `.sampling` and `.history`, the ids its processors see) from (rows, vocab).

        Rows under a grammar are masked together; greedy rows with no processors then take an argmax over the batch,
        and only rows that sample or have processors are handled one by one."""
        masked = self._grammar_masked(rows, logits)
        tokens = masked.argmax(dim=-1).tolist()
        for index, row in enumerate(rows):
            sampling = row.sampling
            if sampling.processors or sampling.generator is not None:
                history = torch.tensor([row.history], dtype=torch.long, device=logits.device)
                scores = self._scores(row, history, masked[index : index + 1])
                if sampling.generator is None:
                    tokens[index] = int(scores.argmax(dim=-1))
                else:
                    probs = torch.softmax(scores, dim=-1)
                    tokens[index] = int(torch.multinomial(probs, 1, generator=sampling.generator))
            if sampling.matcher is not None:
                sampling.matcher.accept(tokens[index])
        return tokens

    def _grammar_masked(self, rows: list, logits: torch.Tensor) -> torch.Tensor:
        """The logits with each constrained row's disallowed tokens at -inf (a copy where any row is constrained)."""
        constrained = [index for index, row in enumerate(rows) if row.sampling.matcher is not None]
        if not constrained:
            return logits
        masked = logits.clone()  # the logits are the whole batch's, read again for log-probabilities
        masked[constrained] = self.grammars().mask([rows[i].sampling.matcher for i in constrained], logits[constrained])
        return masked

    def grammars(self) -> Grammars:
        """The model's vocabulary for structured outputs, made on first use; its width is the logits' (which may
        exceed the tokenizer's)."""
        with self._grammars_made:
            if self._grammars is None:
                head = unwrap_peft(self.loaded.model).get_output_embeddings()
                width = head.weight.shape[0] if head is not None else self.loaded.model.config.vocab_size
                self._grammars = Grammars(self.loaded.tokenizer, width)
            return self._grammars

    @staticmethod
    def _scores(row, history: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """A row's (1, vocab) scores, already through its grammar's mask, through its processors.

        The mask comes first, as vLLM applies it: top-k and top-p then choose among allowed tokens only, where
        cutting first could leave none. Should a processor take the last allowed token away (min_tokens holding
        back the EOS that alone ends a grammar), the masked scores stand."""
        processors = row.sampling.processors
        processed = processors(history, masked.clone()) if processors else masked
        if row.sampling.matcher is not None and not torch.isfinite(processed).any():
            return masked
        return processed

    @staticmethod
    def _generator(job: Job, choice: int, device: torch.device) -> torch.Generator | None:
        if job.params.greedy:
            return None
        seed = job.params.seed if job.params.seed is not None else random.getrandbits(63)
        return torch.Generator(device=device).manual_seed((seed + choice) % (1 << 64))

    def _processors(self, job: Job):
        """The logits processors and warpers `generate()` would use for these settings and this model.

        Under greedy decoding most models have none; that answer is kept, since building the list costs a copy of
        the generation config per request."""
        plain = job.params.greedy and not job.params.penalised
        if plain and self.greedy_plain:
            return []
        processors = self._build_processors(job)
        if plain and self.greedy_plain is None:
            self.greedy_plain = len(processors) == 0
        return processors

    def _build_processors(self, job: Job):
        params = job.params
        settings = GenerationSettings(max_new_tokens=params.max_tokens or 1, do_sample=not params.greedy,
                                      temperature=params.temperature or 1.0, top_k=params.top_k, top_p=params.top_p,
                                      repetition_penalty=params.repetition_penalty,
                                      no_repeat_ngram_size=params.no_repeat_ngram_size)
        config = settings.to_transformers(self.loaded)
        prompt_length = 1 if self.loaded.is_encoder_decoder else len(job.prompt_ids)
        config.max_length = prompt_length + config.max_new_tokens
        model = unwrap_peft(self.loaded.model)
        encoder_ids = torch.tensor([job.prompt_ids]) if self.loaded.is_encoder_decoder else None
        processors = model._get_logits_processor(generation_config=config, input_ids_seq_length=prompt_length,
                                                 encoder_input_ids=encoder_ids, device=str(self.device))
        penalties = OpenAIPenalties(prompt_length, params.presence_penalty, params.frequency_penalty, params.logit_bias)
        if penalties.active:  # first, so temperature and top-k/top-p see the penalised scores, as in vLLM
            processors.insert(0, penalties)
        if params.min_tokens and not params.ignore_eos and self.eos:  # generate() would need its own EOS tensor set
            eos = torch.tensor(sorted(self.eos), device=self.device)
            processors.insert(0, MinNewTokensLengthLogitsProcessor(prompt_length, params.min_tokens, eos, device=str(self.device)))
        return processors
