"""Structured outputs: a reply held to JSON, a JSON schema, a regex, a list of choices or a grammar, token by token.

The grammar engine is llguidance, one of vLLM's structured-output backends: it compiles a JSON schema, a regex or a
Lark (or GBNF) grammar against the tokenizer's vocabulary and, before each token, says which tokens keep the output
valid. This module only turns the request's fields into its grammars, checks them once, and keeps one matcher per
generated row, so constrained and free rows share a batch. xgrammar, vLLM's default backend, pulls in triton (about
1 GB on x86_64) for what llguidance does with no dependencies.

JSON is generated without optional whitespace (compact separators), as the issue of structured outputs on small
models is that every free space is a chance to wander off. For the same reason an object schema that lists its
properties allows no others unless it says so (`additionalProperties`), as xgrammar (vLLM's default backend) and
OpenAI's strict mode generate it: under JSON Schema's own default a small model given a tool's parameters wrote
`{"x":59,"` and then a key that never closed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

MAX_COMPILED = 256  # compiled constraints kept per model
PARALLEL_ROWS = 16  # from this many constrained rows on, their masks are filled by llguidance's thread pool
JSON_DEFAULTS = {"whitespace_flexible": False}
"""No optional whitespace in generated JSON: `{"a":1}`, never `{ "a": 1 }`."""


class ConstraintError(ValueError):
    """A constraint the engine cannot enforce (bad regex, unsupported schema keyword, ...), in one line."""


@dataclass(frozen=True)
class Constraint:
    """What a row's output must match: `kind` names it for messages, `grammar` is llguidance's serialised grammar."""

    kind: str
    grammar: str


def json_object() -> Constraint:
    return json_schema({"type": "object"}, kind="json_object")


def json_schema(schema: dict | bool, kind: str = "json_schema") -> Constraint:
    if not isinstance(schema, (dict, bool)):
        raise ConstraintError("the JSON schema must be an object")
    # keys unsorted: properties are generated in the schema's order, as OpenAI and vLLM generate them
    return Constraint(kind, _grammar_from_schema(json.dumps(closed_objects(schema))))


SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
              "unevaluatedProperties", "unevaluatedItems", "additionalItems")


def closed_objects(schema):
    """A copy of `schema` in which every object schema that lists properties (or property patterns) and says nothing of
    `additionalProperties` allows no other properties. Walks subschemas only, so a property named "properties" is
    a name, not a keyword."""
    if not isinstance(schema, dict):
        return schema
    closed = dict(schema)
    for key in SUBSCHEMA_MAPS:
        if isinstance(closed.get(key), dict):
            closed[key] = {name: closed_objects(sub) for name, sub in closed[key].items()}
    for key in SUBSCHEMA_LISTS:
        if isinstance(closed.get(key), list):
            closed[key] = [closed_objects(sub) for sub in closed[key]]
    for key in SUBSCHEMAS:
        if key in closed:
            sub = closed[key]
            closed[key] = [closed_objects(s) for s in sub] if isinstance(sub, list) else closed_objects(sub)
    if ("properties" in closed or "patternProperties" in closed) and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


def regex(pattern: str) -> Constraint:
    if not isinstance(pattern, str) or not pattern:
        raise ConstraintError("the regex must be a non-empty string")
    return Constraint("regex", _llguidance().LLMatcher.grammar_from_regex(pattern))


def choice(options: list) -> Constraint:
    """One of `options`, verbatim (a regex alternation of the escaped strings, as vLLM builds it)."""
    if not isinstance(options, list) or not options or not all(isinstance(o, str) and o for o in options):
        raise ConstraintError("choice must be a non-empty list of non-empty strings")
    return Constraint("choice", _llguidance().LLMatcher.grammar_from_regex("|".join(f"({re.escape(o)})" for o in options)))


def grammar(text: str) -> Constraint:
    """A Lark grammar (llguidance's syntax) or a GBNF one (`root ::= ...`, as xgrammar and llama.cpp write them)."""
    if not isinstance(text, str) or not text.strip():
        raise ConstraintError("the grammar must be a non-empty string")
    from llguidance.gbnf_to_lark import GbnfToLarkError, any_to_lark

    try:
        lark = any_to_lark(text)
    except GbnfToLarkError as exc:
        raise ConstraintError(f"the grammar does not parse: {_one_line(str(exc))}") from None
    return Constraint("grammar", _llguidance().LLMatcher.grammar_from_lark(lark))


@lru_cache(maxsize=256)
def _grammar_from_schema(schema_json: str) -> str:
    return _llguidance().LLMatcher.grammar_from_json_schema(json.loads(schema_json), defaults=JSON_DEFAULTS)


def _llguidance():
    import llguidance
    import llguidance.torch  # makes llguidance.torch (the bitmask helpers) an attribute

    return llguidance


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.strip().splitlines() if line.strip())[:300]


class Grammars:
    """A model's vocabulary as llguidance reads it, and the check and matchers of constraints against it."""

    def __init__(self, tokenizer, vocab_size: int):
        import llguidance.hf

        self.vocab_size = vocab_size  # the model's logits may be wider than the tokenizer's vocabulary
        self.tokenizer = llguidance.hf.from_tokenizer(_without_prefix_space(tokenizer), n_vocab=vocab_size)
        self._checked: dict[str, str] = {}
        self._compiled: dict = {}  # grammar -> llguidance.LLMatcher at its start, copied for each row
        self._executor = None  # llguidance's thread pool, made on first use

    def mask(self, matchers: list[RowMatcher], scores: torch.Tensor) -> torch.Tensor:
        """`scores` (rows, vocab), row i under matchers[i], with every token that would break its grammar at -inf
        (a copy). From PARALLEL_ROWS rows on, llguidance's thread pool fills the rows' masks in parallel, as vLLM
        fills them; below that, in turn (the hand-off to the pool costs more than a few masks). One call applies them."""
        llguidance = _llguidance()
        bitmask = llguidance.torch.allocate_token_bitmask(len(matchers), self.vocab_size)
        if len(matchers) < PARALLEL_ROWS:  # handing a few rows to the pool costs more than it saves
            for index, row in enumerate(matchers):
                llguidance.torch.fill_next_token_bitmask(row.matcher, bitmask, index)
        else:
            if self._executor is None:
                self._executor = llguidance.LLExecutor()
            llguidance.torch.fill_next_token_bitmask_par(self._executor, [(m.matcher, i) for i, m in enumerate(matchers)], bitmask)
        allowed = unpack_bitmask(bitmask.to(scores.device), scores.shape[-1])
        return scores.masked_fill(~allowed, float("-inf"))

    def check(self, constraint: Constraint) -> None:
        """Raise ConstraintError naming what the engine cannot enforce (an unimplemented schema keyword, ...)."""
        error = self._checked.get(constraint.grammar)
        if error is None:
            error = _one_line(_llguidance().LLMatcher.validate_grammar(constraint.grammar, self.tokenizer) or "")
            if len(self._checked) >= MAX_COMPILED:  # bounded like the compiled matchers below
                self._checked.clear()
            self._checked[constraint.grammar] = error
        if error:
            raise ConstraintError(f"{constraint.kind} cannot be enforced: {error}")

    def matcher(self, constraint: Constraint) -> RowMatcher:
        """A fresh matcher for one row: a copy of the constraint's compiled matcher, compiled once."""
        self.check(constraint)
        compiled = self._compiled.get(constraint.grammar)
        if compiled is None:
            if len(self._compiled) >= MAX_COMPILED:  # many one-off schemas: start over rather than grow
                self._compiled.clear()
            compiled = self._compiled[constraint.grammar] = _llguidance().LLMatcher(self.tokenizer, constraint.grammar, log_level=0)
        return RowMatcher(self, compiled.deep_copy())


def unpack_bitmask(bitmask: torch.Tensor, width: int) -> torch.Tensor:
    """(rows, words) int32 bitmask, bit j of word i allowing token 32 i + j -> (rows, width) booleans.

    Unpacked with plain tensor ops: llguidance's own `apply_token_bitmask_inplace` on a CPU runs a torch.compile'd
    kernel whose first call compiles for seconds, in the middle of a server's first constrained request."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (rows, words, 32)
    return bits.view(bitmask.shape[0], -1)[:, :width].bool()


class RowMatcher:
    """One row's place in its grammar: masks the next token's scores, follows the tokens chosen."""

    def __init__(self, grammars: Grammars, matcher):
        self.grammars = grammars
        self.matcher = matcher  # an llguidance.LLMatcher of the row's own

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """(1, vocab) scores with every token that would break the grammar at -inf (a copy)."""
        return self.grammars.mask([self], scores)

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {_one_line(self.matcher.get_error())}")

    @property
    def finished(self) -> bool:
        """The grammar allows nothing more: the row ends here ("stop")."""
        return self.matcher.is_stopped()

    @property
    def complete(self) -> bool:
        """What was generated so far is a whole match (an end-of-sequence token is allowed now)."""
        return self.matcher.is_accepting()


def _without_prefix_space(tokenizer):
    """The tokenizer with byte-level `add_prefix_space` off, for llguidance's own tokenizations.

    llguidance tokenizes the text a grammar forces to find the tokens that spell it; a tokenizer that puts a space
    before every text (the embedded models' does, as SentencePiece does) would make it ask for a space first.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer
    raw = json.loads(backend.to_str())
    if not _clear_prefix_space(raw.get("pre_tokenizer")):
        return tokenizer
    copy = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(raw)))
    copy.add_special_tokens({"eos_token": tokenizer.eos_token} if tokenizer.eos_token else {})
    return copy


def _clear_prefix_space(node) -> bool:
    """Set add_prefix_space false on every ByteLevel/Metaspace step of a serialised pre-tokenizer; whether any was on."""
    changed = False
    if isinstance(node, dict):
        if node.get("type") == "ByteLevel" and node.get("add_prefix_space"):
            node["add_prefix_space"], changed = False, True
        if node.get("type") == "Metaspace" and node.get("prepend_scheme") not in (None, "never"):
            node["prepend_scheme"], changed = "never", True
        for value in node.values():
            changed = _clear_prefix_space(value) or changed
    elif isinstance(node, list):
        for value in node:
            changed = _clear_prefix_space(value) or changed
    return changed
