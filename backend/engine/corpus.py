"""Text corpora: the embedded CPython documentation, local files, Hugging Face datasets.

A corpus is an iterator of documents (strings). `token_contexts` turns documents into
fixed-length token contexts, deterministically, so that sequence numbers mean the same thing
in every shard and every rerun.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from backend import paths
from backend.errors import UserError

EMBEDDED = "embedded"
"""Corpus name of the CPython documentation that ships with every Python."""


def _stable_fraction(key: str) -> float:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") / 2**32


HELDOUT_FRACTION = 0.25
"""share of the embedded corpus's documents held out from SAE training: about 119k MiniLM tokens,
so a demo precompute over all of it resolves densities below 1e-5"""


def embedded_documents(split: str = "all", heldout_fraction: float = HELDOUT_FRACTION) -> Iterator[str]:
    """pydoc_data.topics then the stdlib's docstrings (parsed, never imported), in a fixed order.

    `split` is "train", "heldout" or "all"; documents go to the held-out split by a hash of
    their name, so the split is the same on every machine with the same Python version.
    """
    if split not in ("train", "heldout", "all"):
        raise UserError(f"unknown split {split!r}: use train, heldout or all")
    for name, text in _embedded_named_documents():
        held = _stable_fraction(name) < heldout_fraction
        if split == "all" or (split == "heldout") == held:
            yield text


def _embedded_named_documents() -> list[tuple[str, str]]:
    """(name, text) of every embedded document, in order. Parsing the stdlib's ~600 files takes 3-6
    s of CPU, which a precompute's corpus thread spends beside the model's forward on a small
    host; so the list is kept in the cache folder (paths.cache_dir), keyed by the Python version
    and every source file's path, size and modification time, and parsed again only when one of
    those changes. A cache that cannot be read or written is skipped, never an error."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(_stdlib_sources(stdlib))
    key = hashlib.sha1(sys.version.encode())
    for path in sources:
        try:
            st = path.stat()
        except OSError:
            continue
        key.update(f"\0{path.relative_to(stdlib)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    cached = paths.cache_dir() / f"embedded-corpus-{key.hexdigest()[:20]}.json"
    try:
        return [(n, t) for n, t in json.loads(cached.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        pass
    docs = list(_parse_embedded(stdlib, sources))
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(docs), encoding="utf-8")
        os.replace(tmp, cached)  # readers see the whole file or none
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a half-written file (a full disk)
    return docs


def _parse_embedded(stdlib: Path, sources: list[Path]) -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield f"topic:{key}", topics[key]
    for path in sources:
        rel = path.relative_to(stdlib)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    yield f"doc:{rel}:{getattr(node, 'name', '')}:{getattr(node, 'lineno', 0)}", doc


_SKIP_DIRS = {"test", "idlelib", "site-packages", "lib2to3", "tkinter", "turtledemo", "ensurepip"}


def _stdlib_sources(root: Path) -> Iterator[Path]:
    """The stdlib's .py files outside tests and GUI code; skipped folders are never entered
    (walking site-packages only to discard it was most of the corpus start-up time)."""
    for entry in os.scandir(root):
        if entry.is_dir():
            if entry.name not in _SKIP_DIRS and entry.name != "__pycache__":
                yield from _stdlib_sources(Path(entry.path))
        elif entry.name.endswith(".py"):
            yield Path(entry.path)


def _local_documents(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a corpus file")
    if suffix in (".txt", ".md"):
        # Blank-line separated paragraphs are documents; a file without them is one document.
        text = path.read_text(encoding="utf-8", errors="replace")
        for para in text.split("\n\n"):
            if para.strip():
                yield para
    elif suffix in (".jsonl", ".json"):
        yield from _jsonl_documents(path, text_field)
    elif suffix == ".parquet":
        yield from _parquet_documents(path, text_field)
    else:
        raise UserError(f"{path}: unsupported corpus file type {suffix!r} (use .txt, .jsonl or .parquet)")


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    lineno = 0
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno} is not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or text_field not in row:
                    raise UserError(f"{path}:{lineno} has no {text_field!r} field (set --text-field)")
                yield str(row[text_field])
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (after line {lineno}): is it really a JSON-lines file?") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a corpus file") from None


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path} is not a readable Parquet file ({str(e).splitlines()[0][:150]})") from None
    if text_field not in pf.schema_arrow.names:
        raise UserError(f"{path} has no column {text_field!r} (columns: {pf.schema_arrow.names})")
    try:
        for batch in pf.iter_batches(columns=[text_field]):
            yield from (str(t) for t in batch.column(0).to_pylist() if t)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: could not read column {text_field!r} ({str(e).splitlines()[0][:150]})") from None


def _hf_documents(name: str, split: str, text_field: str) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:  # noqa: BLE001 - many network/hub error types; the message is what matters
        raise UserError(f"could not open Hugging Face dataset {name!r}: {str(e).splitlines()[0]}") from None
    for row in ds:
        if text_field not in row:
            raise UserError(f"dataset {name!r} has no {text_field!r} field (set --text-field)")
        yield row[text_field]


def documents(source: str, split: str = "train", text_field: str = "text") -> Iterator[str]:
    """Documents of `source`: "embedded[:train|heldout|all]", a local file, or an HF dataset."""
    if source == EMBEDDED or source.startswith(EMBEDDED + ":"):
        part = source.split(":", 1)[1] if ":" in source else "heldout"
        return embedded_documents(part)
    path = Path(source).expanduser()
    if path.exists():
        return _local_documents(path, text_field)
    if path.suffix.lower() in (".txt", ".jsonl", ".json", ".parquet", ".md") or "/" not in source and "." in source:
        raise UserError(f"corpus file {source} does not exist")
    return _hf_documents(source, split, text_field)


def token_contexts(docs: Iterator[str], tokenizer, content_len: int, batch_docs: int = 64) -> Iterator[np.ndarray]:
    """Concatenate documents (separated by the tokenizer's EOS/SEP) and cut fixed-length chunks.

    Chunks hold only content tokens; the model adapter adds BOS/CLS/SEP around them.
    """
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    buf: list[int] = []
    pending: list[str] = []

    def flush():
        enc = tokenizer(pending, add_special_tokens=False)["input_ids"]
        for ids in enc:
            buf.extend(ids)
            if sep is not None:
                buf.append(sep)
        pending.clear()

    for doc in docs:
        pending.append(doc)
        if len(pending) >= batch_docs:
            flush()
            while len(buf) >= content_len:
                yield np.asarray(buf[:content_len], dtype=np.int32)
                del buf[:content_len]
    if pending:
        flush()
    while len(buf) >= content_len:
        yield np.asarray(buf[:content_len], dtype=np.int32)
        del buf[:content_len]
