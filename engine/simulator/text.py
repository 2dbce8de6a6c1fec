"""Deterministic text in one language, written to a token budget: instructions, answers, JSON.

Each word's token cost is computed once per (language, encoding), so writing a reply costs a
few hundred random draws and no tokenizer calls; the caller counts the finished text once.
Nothing here raises: malformed JSON schemas degrade to plain strings.
"""

from __future__ import annotations

import functools
import math
import random
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import tiktoken

from engine.simulator.languages import ENGLISH, Language
from engine.tokens import get_encoding

__all__ = [
    "INSTRUCTION_TOKENS",
    "Composer",
    "ReplySpec",
    "composer_for",
    "json_keys_in",
    "language_factor",
]

# An instruction is one or two sentences: past this many tokens it stops, whatever the draw.
INSTRUCTION_TOKENS = 80
_COMMA_P = 0.4  # chance that a longer sentence has a comma
_POOL_SIZE = 1024  # ready statements per (language, encoding)
_KEY_IN_PROMPT = re.compile(r'"([A-Za-z_][A-Za-z0-9_]{0,40})"\s*:')
_MAX_SCHEMA_DEPTH = 8


@dataclass(frozen=True, slots=True)
class ReplySpec:
    """What a reply must look like: language, instruction or answer, plain text or JSON."""

    language: Language
    instruction: bool = False  # a rewrite request: a question or imperative, 1-2 sentences
    json: bool = False
    json_keys: tuple[str, ...] = ()  # keys the prompt shows, used when no schema is given
    json_schema: Mapping[str, Any] | None = None
    repetition: bool = False  # the "repetition" content fault
    # Write an instruction to its budget (context sentences, then the ask) instead of a
    # sentence or two: the simulator's realistic reply lengths.
    fill: bool = False


def json_keys_in(text: str) -> tuple[str, ...]:
    """Keys of a JSON example in a prompt (``"name": ...``), first eight, in order."""
    return tuple(dict.fromkeys(_KEY_IN_PROMPT.findall(text)))[:8]


class Composer:
    """Writes text in one language; word costs are counted once with one encoding."""

    __slots__ = ("_ask_costs", "_costs", "_pool", "_pool_mean", "_tell_costs", "lang")

    def __init__(self, lang: Language, encoding: tiktoken.Encoding) -> None:
        self.lang = lang
        sep = " " if lang.spaced else ""

        def costs(words: tuple[str, ...]) -> tuple[int, ...]:
            return tuple(len(encoding.encode_ordinary(sep + w)) for w in words)

        self._costs = costs(lang.words)
        self._ask_costs = costs(lang.asks)
        self._tell_costs = costs(lang.tells)
        # A pool of ready statements: an answer is mostly drawn from it (a few draws instead of
        # hundreds of word draws), with only its last sentence written word by word to fit.
        # The pool's own seed is fixed per language, so replies stay a function of the request.
        pool_rng = random.Random(zlib.crc32(lang.name.encode()))
        self._pool = [self.statement(pool_rng, math.inf) for _ in range(_POOL_SIZE)]
        self._pool_mean = sum(cost for _, cost in self._pool) / _POOL_SIZE

    # --- sentences ------------------------------------------------------------------------------

    def _fill(self, rng: random.Random, n: int, budget: float) -> tuple[list[str], float]:
        """Up to ``n`` random words, stopping once their cost reaches ``budget``."""
        words: list[str] = []
        cost = 0.0
        vocab, costs = self.lang.words, self._costs
        # One choices() call draws all indices: several times cheaper than n randrange() calls.
        for i in rng.choices(range(len(vocab)), k=n):
            words.append(vocab[i])
            cost += costs[i]
            if cost >= budget:
                break
        return words, cost

    def _join(self, rng: random.Random, words: list[str], end: str, opener: str = "") -> str:
        lang = self.lang
        if len(words) > 5 and rng.random() < _COMMA_P:
            # A comma inside the sentence, never after its first or its last two words.
            at = rng.randrange(1, len(words) - 2)
            words[at] += lang.comma
        text = (" " if lang.spaced else "").join(words)
        if lang.cased and text:
            first = "İ" if text[0] == "i" and lang.name == "Turkish" else text[0].upper()
            text = first + text[1:]
        return opener + text + end

    def statement(self, rng: random.Random, budget: float) -> tuple[str, float]:
        words, cost = self._fill(rng, rng.randint(6, 16), budget)
        return self._join(rng, words, self.lang.stop), cost + 1

    def question(self, rng: random.Random, budget: float) -> tuple[str, float]:
        i = rng.randrange(len(self.lang.asks))
        words, cost = self._fill(rng, rng.randint(5, 14), budget - self._ask_costs[i])
        opener = self.lang.question_open
        return self._join(rng, [self.lang.asks[i], *words], self.lang.question, opener), cost + 2

    def imperative(self, rng: random.Random, budget: float) -> tuple[str, float]:
        i = rng.randrange(len(self.lang.tells))
        words, cost = self._fill(rng, rng.randint(5, 14), budget - self._tell_costs[i])
        tell = self.lang.tells[i]
        ordered = [*words, tell] if self.lang.verb_final else [tell, *words]
        return self._join(rng, ordered, self.lang.stop), cost + 2

    # --- replies --------------------------------------------------------------------------------

    def instruction(self, rng: random.Random, tokens: int) -> str:
        """One or two sentences, the last a question or an imperative."""
        budget = float(min(tokens, INSTRUCTION_TOKENS))
        parts: list[str] = []
        if budget >= 24 and rng.random() < 0.5:
            context, cost = self.statement(rng, budget / 2)
            parts.append(context)
            budget -= cost
        ask = rng.random() < 0.5
        last, _ = (self.question if ask else self.imperative)(rng, max(budget, 4))
        parts.append(last)
        return self._sentences(parts)

    @property
    def statement_tokens(self) -> float:
        """Mean tokens of a statement in this language (its token cost, for lengths)."""
        return self._pool_mean

    def long_instruction(self, rng: random.Random, tokens: int) -> str:
        """Context statements up to about ``tokens``, then a question or an imperative."""
        ask_room = min(24.0, float(tokens))
        parts: list[str] = []
        spent = 0.0
        for sentence, cost in rng.sample(self._pool, min(_POOL_SIZE, tokens // 8 + 2)):
            if spent + cost + 1 > tokens - ask_room:
                break
            parts.append(sentence)
            spent += cost + 1
        ask = rng.random() < 0.5
        last, _ = (self.question if ask else self.imperative)(rng, max(tokens - spent, 4))
        parts.append(last)
        return self._sentences(parts)

    def answer(self, rng: random.Random, budget: int) -> str:
        """Paragraphs of three to six statements, about ``budget`` tokens in all."""
        # Sampling without replacement: no sentence comes twice in one reply, which a
        # repetition filter would rightly flag.
        k = min(_POOL_SIZE, int(budget / self._pool_mean) + 2)
        drawn = iter(rng.sample(self._pool, k))
        paragraphs: list[str] = []
        spent = 0.0
        while spent < budget:
            sentences: list[str] = []
            for _ in range(rng.randint(3, 6)):
                sentence, cost = next(drawn, ("", math.inf))
                if spent + cost + 1 > budget:
                    sentence, cost = self.statement(rng, budget - spent)
                sentences.append(sentence)
                spent += cost + 1
                if spent >= budget:
                    break
            paragraphs.append(self._sentences(sentences))
            spent += 1  # the paragraph break
        return "\n\n".join(paragraphs)

    def repetition(self, rng: random.Random, budget: int) -> str:
        """One short sentence said again and again (what n-gram repetition filters catch)."""
        phrase, cost = self.statement(rng, 6)
        times = max(3, int(budget // max(1.0, cost + 1)))
        return self._sentences([phrase] * times)

    def _sentences(self, sentences: list[str]) -> str:
        return (" " if self.lang.spaced else "").join(sentences)

    def text(self, spec: ReplySpec, rng: random.Random, budget: int) -> str:
        """Plain text for ``spec`` (JSON aside) in about ``budget`` tokens."""
        if spec.repetition:
            return self.repetition(rng, budget)
        if spec.instruction:
            if spec.fill:
                return self.long_instruction(rng, budget)
            return self.instruction(rng, budget)
        return self.answer(rng, budget)

    def reply(self, spec: ReplySpec, rng: random.Random, budget: int) -> str:
        """The whole reply: plain text, or a JSON document whose main string holds that text."""
        if not spec.json:
            return self.text(spec, rng, budget)
        state = _JsonFill(self, spec, rng, budget)
        if spec.json_schema is not None:
            value = state.value(spec.json_schema, spec.json_schema, 0)
        else:
            keys = spec.json_keys or (("instruction",) if spec.instruction else ("answer",))
            value = {key: state.string() for key in keys}
        return orjson.dumps(value).decode()


class _JsonFill:
    """Fills a JSON schema: the first string gets the main text, later strings a short phrase."""

    __slots__ = ("_budget", "_composer", "_main_done", "_rng", "_spec")

    def __init__(self, composer: Composer, spec: ReplySpec, rng: random.Random, budget: int):
        self._composer = composer
        self._spec = spec
        self._rng = rng
        self._budget = budget
        self._main_done = False

    def string(self) -> str:
        if self._main_done:
            return self._composer.statement(self._rng, 8)[0]
        self._main_done = True
        return self._composer.text(self._spec, self._rng, max(4, self._budget - 8))

    def value(self, schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> object:
        rng = self._rng
        if depth > _MAX_SCHEMA_DEPTH or not isinstance(schema, Mapping):
            return self.string()
        schema = _resolve(schema, root)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return rng.choice(enum)
        for combinator in ("anyOf", "oneOf", "allOf"):
            options = schema.get(combinator)
            if isinstance(options, list) and options:
                non_null = [
                    o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")
                ]
                return self.value((non_null or options)[0], root, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = (
                "object" if "properties" in schema else "array" if "items" in schema else "string"
            )
        if kind == "object":
            props = schema.get("properties")
            if not isinstance(props, Mapping) or not props:
                return {"text": self.string()}
            return {str(k): self.value(v, root, depth + 1) for k, v in props.items()}
        if kind == "array":
            low = schema.get("minItems", 1)
            low = low if isinstance(low, int) and low >= 0 else 1
            high = schema.get("maxItems", max(low, 3))
            high = high if isinstance(high, int) and high >= low else max(low, 3)
            items = schema.get("items", {})
            return [self.value(items, root, depth + 1) for _ in range(rng.randint(low, high))]
        if kind == "integer":
            low = schema.get("minimum", 1)
            high = schema.get("maximum", max(low, 10) if isinstance(low, int) else 10)
            if isinstance(low, int) and isinstance(high, int) and low <= high:
                return rng.randint(low, high)
            return 1
        if kind == "number":
            return round(rng.uniform(0.0, 10.0), 2)
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "null":
            return None
        return self.string()


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/X`` or ``#/definitions/X``); others stay as they are."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return {}
        node = node[part]
    return node if isinstance(node, Mapping) else {}


@functools.lru_cache(maxsize=256)
def composer_for(lang: Language, encoding_name: str) -> Composer:
    """The (cached) composer of one language for one encoding."""
    return Composer(lang, get_encoding(encoding_name))


@functools.lru_cache(maxsize=256)
def language_factor(lang: Language, encoding_name: str) -> float:
    """How many times English's tokens the same statements take in ``lang`` (at least 0.5)."""
    english = composer_for(ENGLISH, encoding_name).statement_tokens
    return max(0.5, composer_for(lang, encoding_name).statement_tokens / english)
