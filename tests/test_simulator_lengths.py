"""The simulator's realistic reply lengths: long answers with a heavy tail, short instructions,
more tokens for a language that costs more, cut at max_tokens as a real model is."""

from __future__ import annotations

import statistics

import orjson

from engine.simulator import ReplyWriter, SimRequest, SimSettings, parse_request
from engine.simulator.counting import UsageCounter

REWRITE = "Rewrite it. Return only the new instruction."


def reply_lengths(
    writer: ReplyWriter, language: str, *, instruction: bool, n: int, max_tokens: int = 16000
) -> list[tuple[int, str]]:
    out = []
    for i in range(n):
        last = f"{REWRITE} ({i})" if instruction else f"Question number {i}?"
        body = {
            "model": "gpt-4o-sim",
            "max_tokens": max_tokens,
            "messages": [
                {"role": "system", "content": f"Target language: {language}"},
                {"role": "user", "content": last},
            ],
        }
        req = parse_request(orjson.dumps(body))
        assert isinstance(req, SimRequest)
        reply = writer.write(req, max_tokens, 1, None)
        out.append((reply.completion_tokens, reply.finish_reason))
    return out


def test_realistic_lengths_have_long_heavy_tailed_answers_and_short_instructions() -> None:
    """Answers: median near 220 tokens, a tail past 3x the median; instructions (evolve and
    follow-up outputs): a few dozen tokens; Amharic answers take several times English's
    tokens; a cap cuts the long ones with "length"."""
    realistic = ReplyWriter(SimSettings(reply_lengths="realistic"), UsageCounter())
    answers = sorted(t for t, _ in reply_lengths(realistic, "English", instruction=False, n=400))
    median = statistics.median(answers)
    assert 150 <= median <= 300
    assert answers[int(0.99 * len(answers))] > 3 * median  # the heavy tail
    instructions = [t for t, _ in reply_lengths(realistic, "English", instruction=True, n=200)]
    assert 12 <= statistics.median(instructions) <= 70 and max(instructions) < 400
    amharic = [t for t, _ in reply_lengths(realistic, "Amharic", instruction=False, n=100)]
    assert statistics.median(amharic) > 3 * median
    cut = reply_lengths(realistic, "English", instruction=False, n=200, max_tokens=300)
    assert all(t <= 300 for t, _ in cut)
    assert 0.1 < sum(f == "length" for _, f in cut) / len(cut) < 0.6
    # The default stays uniform in its bounds, instructions a sentence or two.
    uniform = ReplyWriter(SimSettings(), UsageCounter())
    plain = [t for t, _ in reply_lengths(uniform, "English", instruction=False, n=200)]
    assert min(plain) >= 15 and max(plain) <= 400 + 8
