"""The language model's arrays kept uncompressed on disk, so a process loads them in ~0.1 s.

py3langid ships its model xz-compressed: every process that checks languages (each run, each
resume, `m2l filter` and each of its workers) spent about 0.6 s of CPU decompressing it and
0.25 s widening its table, before its first request or its first check. The first process
writes the arrays it ends up with to the user's cache folder; later ones map the table from
there (one copy in the page cache, shared by every process reading it) and copy the small
automaton arrays. The floats are the same bits either way.

A cache entry is named by what it was made from (py3langid's version, the model file's size
and modification time, this module's format), is written to a temporary folder and renamed
into place whole, and is checked when read (every array's dtype and shape); one that fails is
ignored and made again. A cache folder that cannot be written costs only the time: nothing
here raises for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["ModelArrays", "cache_root", "load_cached", "store"]

_FORMAT = 1
_ARRAYS = ("ptc", "pc", "nextmove", "row", "output")


@dataclass(frozen=True, slots=True)
class ModelArrays:
    """py3langid's model as ranker.NaiveBayes reads it (the attribute names it expects)."""

    nb_ptc: npt.NDArray[np.float32]  # widened from the shipped float16
    nb_pc: npt.NDArray[np.float32]
    nb_classes: list[str]
    tk_nextmove: array[int]
    tk_row: array[int]
    tk_output: list[int]


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/m2l`` (``~/.cache/m2l`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "m2l"


def entry_name(model_file: Path, version: str) -> str:
    """The cache folder's name for this model file and py3langid version."""
    stat = model_file.stat()
    made_from = f"{_FORMAT}|{version}|{model_file.name}|{stat.st_size}|{stat.st_mtime_ns}"
    return "langid-" + hashlib.blake2b(made_from.encode(), digest_size=8).hexdigest()


def load_cached(folder: Path) -> ModelArrays | None:
    """The arrays stored in ``folder``, or None when it is missing or not whole."""
    import numpy as np

    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {}
        for name in _ARRAYS:
            # The table is mapped, not read: pages come in as rows are used, and processes
            # reading the same file share them.
            found = np.load(folder / f"{name}.npy", mmap_mode="r" if name == "ptc" else None)
            dtype, shape = meta["arrays"][name]
            if str(found.dtype) != dtype or list(found.shape) != shape:
                return None
            arrays[name] = found
        classes = meta["classes"]
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ModelArrays(
        nb_ptc=arrays["ptc"],
        nb_pc=np.asarray(arrays["pc"]),
        nb_classes=classes,
        tk_nextmove=array(meta["typecodes"]["nextmove"], arrays["nextmove"].tobytes()),
        tk_row=array(meta["typecodes"]["row"], arrays["row"].tobytes()),
        tk_output=arrays["output"].tolist(),
    )


def store(folder: Path, identifier: Any) -> None:
    """Write a loaded py3langid identifier's arrays as ``folder``, whole or not at all."""
    import numpy as np

    values: dict[str, Any] = {
        "ptc": np.asarray(identifier.nb_ptc, dtype=np.float32),
        "pc": np.asarray(identifier.nb_pc, dtype=np.float32),
        "nextmove": np.frombuffer(identifier.tk_nextmove, dtype=_dtype(identifier.tk_nextmove)),
        "row": np.frombuffer(identifier.tk_row, dtype=_dtype(identifier.tk_row)),
        "output": np.asarray(identifier.tk_output, dtype=np.int64),
    }
    meta = {
        "classes": list(identifier.nb_classes),
        "typecodes": {
            "nextmove": identifier.tk_nextmove.typecode,
            "row": identifier.tk_row.typecode,
        },
        "arrays": {name: [str(v.dtype), list(v.shape)] for name, v in values.items()},
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name, value in values.items():
            np.save(scratch / f"{name}.npy", value)
        (scratch / "meta.json").write_text(json.dumps(meta))
        try:
            scratch.rename(folder)
        except OSError:
            # Another process put a whole entry there first (kept), or a damaged one is in the
            # way (replaced; a reader of it already failed, as this process did).
            if load_cached(folder) is None:
                shutil.rmtree(folder, ignore_errors=True)
                with contextlib.suppress(OSError):
                    scratch.rename(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _dtype(values: array[int]) -> str:
    return f"u{values.itemsize}" if values.typecode.isupper() else f"i{values.itemsize}"
