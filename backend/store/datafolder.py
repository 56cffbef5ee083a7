"""What a data folder may hold, and how its DuckDB files are opened.

A feature database is offered, and opened, only if it is a regular file of the folder (no link
to a file elsewhere), starts as a DuckDB file does (a SQLite file named `*.duckdb` would make
DuckDB reach for an extension), and is as long as its own header says (a copy cut short on a
full disk would otherwise open and fail page by page). Read connections never install or load
DuckDB extensions: a file passed around is data, never a reason to fetch code.
"""

from __future__ import annotations

import struct
from pathlib import Path

import duckdb

HEADER = 4096
"""DuckDB's file starts with a main header and two database headers of this size each"""


def connect_read(path: str | Path) -> duckdb.DuckDBPyConnection:
    """Read-only, extensions off. Set after connecting, not as connect() options: DuckDB refuses
    a second connection to a file with options other than the first one's (a test's, a writer's)."""
    con = duckdb.connect(str(path), read_only=True)
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    return con


def file_problem(path: str | Path) -> str | None:
    """Why `path` is not a DuckDB file the dashboard may open (None: it may), from its first
    12 KiB and its size alone."""
    p = Path(path)
    if p.is_symlink():
        return "it is a link; the data folder serves its own files only (copy the database in)"
    if not p.is_file():
        return "it is not a file"
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            head = fh.read(3 * HEADER)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if head[:16] == b"SQLite format 3\x00":
        return "it is a SQLite file, not a DuckDB database"
    if len(head) < 3 * HEADER or head[8:12] != b"DUCK":
        return "it is not a DuckDB database file" + (" (it is empty)" if not size else "")
    # the database header with the higher iteration is the current one: (checksum, iteration,
    # meta block, free list, block count, block size, ...)
    headers = [struct.unpack_from("<8Q", head, HEADER * k) for k in (1, 2)]
    current = max(headers, key=lambda h: h[1])
    blocks, block_size = current[4], current[5]
    if 4096 <= block_size <= 1 << 24 and blocks < 1 << 40:
        need = 3 * HEADER + blocks * block_size
        if size < need:
            return f"it is truncated ({size:,} bytes where its header counts {need:,}): copy it again or rebuild it"
    return None
