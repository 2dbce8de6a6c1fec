"""IntMap, the compact map behind the duplicate index: a dict's setdefault semantics, with
entries moved into sorted arrays as it grows."""

from __future__ import annotations

import random

from engine.quality.dedup import NearDuplicateIndex
from engine.quality.intmap import IntMap


def test_intmap_answers_as_a_dict_across_merges() -> None:
    """60,000 signed 64-bit keys (some repeated): every lookup agrees with dict.setdefault,
    before and after the buffer is merged into the arrays, and the first value wins."""
    rng = random.Random(7)
    keys = [rng.randrange(-(1 << 63), 1 << 63) for _ in range(40_000)]
    keys += rng.sample(keys, 20_000)  # repeats, which must keep their first value
    ours, reference = IntMap(), {}
    for i, key in enumerate(keys):
        assert ours.setdefault(key, i) == reference.setdefault(key, i)
    assert len(ours) == len(reference)
    probes = rng.sample(keys, 2_000) + [rng.randrange(-(1 << 63), 1 << 63) for _ in range(500)]
    for key in probes:
        assert ours.get(key) == reference.get(key)
        assert (key in ours) == (key in reference)
    assert sorted(ours.get_many(probes)) == sorted(reference[k] for k in probes if k in reference)


def test_duplicate_index_finds_copies_of_early_texts_after_its_maps_merged() -> None:
    """2,000 distinct texts push the index's maps past their first merge; a later exact copy
    and a lightly edited copy of early texts still name the right earlier conversation."""
    rng = random.Random(3)
    words = [f"w{i}" for i in range(5_000)]
    texts = [" ".join(rng.choices(words, k=120)) for _ in range(2_000)]
    index = NearDuplicateIndex()
    for conv_id, text in enumerate(texts):
        assert index.add(conv_id, text) is None
    assert index.add(5_000, texts[3].upper()) == 3  # exact, case folded
    edited = texts[10].split()
    edited[60] = "changed"
    assert index.add(5_001, " ".join(edited)) == 10
    assert 5_001 not in index and 10 in index and 1_999 in index


def test_setdefault_many_answers_as_setdefault_one_by_one() -> None:
    """Groups of keys (present in the buffer, in the arrays, new, or twice in one group) end
    with the values dict.setdefault gives them one at a time, across merges."""
    rng = random.Random(11)
    pool = [rng.randrange(-(1 << 63), 1 << 63) for _ in range(30_000)]
    ours, reference = IntMap(), {}
    for value in range(6_000):
        group = rng.sample(pool, 12)
        if value % 7 == 0:
            group.append(group[0])  # the same key twice in one group
        ours.setdefault_many(group, value)
        for key in group:
            reference.setdefault(key, value)
    assert len(ours) == len(reference)
    for key in pool[:5_000]:
        assert ours.get(key) == reference.get(key)
