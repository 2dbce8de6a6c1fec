"""The language model's on-disk cache: the same floats as py3langid's own model, and a cache
that is damaged or cannot be written costs time only."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Any

import pytest

from engine.quality import modelcache
from engine.quality.langid import Py3LangidDetector, _model_arrays
from engine.quality.ranker import NaiveBayes

CORPUS = Path(__file__).parent / "data" / "language_corpus.toml"
TEXTS = [case["text"] for case in tomllib.loads(CORPUS.read_text(encoding="utf-8"))["case"]]
EDGES = ["", "1234 5678", "x" * 3000, "ß ǅ Ǆ ﬁ", "日本語です。"]


@pytest.fixture(scope="module")
def module() -> Any:
    return importlib.import_module("py3langid.langid")


@pytest.fixture(scope="module")
def reference(module: Any) -> NaiveBayes:
    """The model built from py3langid's compressed file, as before the cache."""
    return NaiveBayes(module.LanguageIdentifier.from_model_file(module.MODEL_FILE, norm_probs=True))


def _entry(cache: Path) -> Path:
    (found,) = (cache / "m2l").glob("langid-*")
    return found


def test_a_cached_model_ranks_with_the_same_floats(
    module: Any, reference: NaiveBayes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first load writes the cache, the second reads it: every ranking, one text at a time
    and many together, is the reference's to the last bit."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = _model_arrays(module)
    assert not isinstance(first, modelcache.ModelArrays)  # decompressed: nothing cached yet
    cached = _model_arrays(module)
    assert isinstance(cached, modelcache.ModelArrays)
    model = NaiveBayes(cached)
    assert model.labels == reference.labels
    texts = TEXTS + EDGES
    for text in texts:
        assert list(model.rank(text, 2000)) == list(reference.rank(text, 2000)), text[:40]
    together = model.rank_many(texts, 2000)
    assert [list(r) for r in together] == [list(r) for r in reference.rank_many(texts, 2000)]


def test_a_damaged_cache_entry_is_made_again(
    module: Any, reference: NaiveBayes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table cut short (a full disk, a kill mid-copy by hand): ignored, rebuilt, same ranks."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _model_arrays(module)
    entry = _entry(tmp_path)
    table = entry / "ptc.npy"
    table.write_bytes(table.read_bytes()[: 1 << 20])
    assert modelcache.load_cached(entry) is None
    (entry / "meta.json").write_text("{not json")
    assert modelcache.load_cached(entry) is None
    arrays = _model_arrays(module)  # loaded from the package, and the entry written again
    assert not isinstance(arrays, modelcache.ModelArrays)
    again = modelcache.load_cached(_entry(tmp_path))
    assert again is not None
    for made in (arrays, again):
        assert list(NaiveBayes(made).rank(TEXTS[0], 2000)) == list(reference.rank(TEXTS[0], 2000))


def test_a_cache_that_cannot_be_written_only_costs_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XDG_CACHE_HOME naming a file: the detector loads and ranks, nothing raises."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    detector = Py3LangidDetector()
    assert detector.rank("Das ist ein ganz normaler deutscher Satz.").top()[0] == "de"
    assert blocker.read_text() == "not a folder"
