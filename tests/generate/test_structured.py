"""Constraints compiled by llguidance hold a row to JSON, a schema, a regex, a choice or a grammar, whatever the
model's scores: here the scores are random, the harshest test of the mask."""

import json
import re

import jsonschema
import pytest
import torch
from transformers import AutoTokenizer

from llmcycle.generate import structured
from llmcycle.models import bundled_models

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 2},
        "size": {"type": "integer"},
        "inner": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    },
    "required": ["name", "tags", "size", "inner"],
    "additionalProperties": False,
}


def sample(grammars, tokenizer, constraint, seed: int, steps: int = 120) -> tuple[str, bool]:
    """Sample from random scores under the constraint until it ends; the text and whether it is a whole match."""
    generator = torch.Generator().manual_seed(seed)
    matcher, tokens = grammars.matcher(constraint), []
    for _ in range(steps):
        scores = torch.randn(1, grammars.vocab_size, generator=generator) * 2
        scores[0, tokenizer.eos_token_id] += 4  # so rows end soon where the grammar allows it
        scores = matcher.mask(scores)
        token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))
        if token == tokenizer.eos_token_id:
            assert matcher.complete
            break
        matcher.accept(token)
        tokens.append(token)
        if matcher.finished:
            break
    return tokenizer.decode(tokens), matcher.complete


@pytest.fixture(scope="module", params=["gpt2", "embedded-llama"])
def vocabulary(request, gpt2_dir):
    """A GPT-2 byte-level tokenizer, and the embedded Llama's, which puts a space before every text."""
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir if request.param == "gpt2" else bundled_models()[request.param])
    return structured.Grammars(tokenizer, len(tokenizer) + 5), tokenizer


def test_json_schema_output_validates_and_is_compact(vocabulary):
    grammars, tokenizer = vocabulary
    for seed in range(4):
        text, complete = sample(grammars, tokenizer, structured.json_schema(SCHEMA), seed, steps=400)
        if complete:
            value = json.loads(text)
            jsonschema.validate(value, SCHEMA)
            assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        else:  # cut short: still a prefix of valid compact JSON
            assert text.startswith('{"')


def test_regex_and_choice_are_obeyed(vocabulary):
    grammars, tokenizer = vocabulary
    for seed in range(3):
        text, complete = sample(grammars, tokenizer, structured.regex(r"[0-9]{3}-(ab|cd)"), seed)
        assert complete and re.fullmatch(r"[0-9]{3}-(ab|cd)", text)
        text, complete = sample(grammars, tokenizer, structured.choice(["yes", "no way", "maybe"]), seed)
        assert complete and text in ("yes", "no way", "maybe")


def test_json_object_and_gbnf_grammar(vocabulary):
    grammars, tokenizer = vocabulary
    text, complete = sample(grammars, tokenizer, structured.json_object(), 0, steps=400)
    assert not complete or isinstance(json.loads(text), dict)
    assert text.startswith("{")
    text, complete = sample(grammars, tokenizer, structured.grammar('root ::= "on" | "off"'), 0)
    assert complete and text in ("on", "off")


def test_what_cannot_be_enforced_is_named(vocabulary):
    grammars, _ = vocabulary
    with pytest.raises(structured.ConstraintError, match="not"):
        grammars.check(structured.json_schema({"not": {"type": "string"}}))
    with pytest.raises(structured.ConstraintError, match="regex"):
        grammars.check(structured.regex("(unclosed"))
    with pytest.raises(structured.ConstraintError, match="grammar"):
        structured.grammar("root ::= (")
    with pytest.raises(structured.ConstraintError):
        structured.choice([])


def test_objects_that_list_their_properties_allow_no_others_unless_the_schema_says_so(vocabulary):
    """As xgrammar (vLLM's default backend) and OpenAI's strict mode generate them: a tool's parameters rarely say
    `additionalProperties`, and a small model given room for another key writes one that never closes."""
    grammars, tokenizer = vocabulary
    open_default = {"type": "object", "properties": {"a": {"type": "integer", "maximum": 9}}, "required": ["a"]}
    for seed in range(6):
        text, complete = sample(grammars, tokenizer, structured.json_schema(open_default), seed, steps=200)
        assert not complete or list(json.loads(text)) == ["a"]
        assert re.fullmatch(r'\{"a":-?[0-9]*\}?', text)  # a comma after the value is never allowed
    said_open = {**open_default, "additionalProperties": {"type": "integer"}}
    assert structured.closed_objects(said_open) == said_open
    nested = {"properties": {"properties": {"properties": {"x": {}}}, "list": {"items": {"properties": {"y": {}}}}},
              "$defs": {"d": {"patternProperties": {"^z": {}}}}}
    closed = structured.closed_objects(nested)
    assert closed["additionalProperties"] is False and "additionalProperties" not in closed["properties"]  # a name, not a keyword
    assert closed["properties"]["properties"]["additionalProperties"] is False
    assert closed["properties"]["list"]["items"]["additionalProperties"] is False
    assert closed["$defs"]["d"]["additionalProperties"] is False
    assert structured.closed_objects({"type": "object"}) == {"type": "object"}  # json_object mode: any object
