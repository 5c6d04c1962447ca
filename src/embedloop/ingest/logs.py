"""Reading what is new in the interaction logs, and remembering how far each file was read.

One row per shown result (schema.py: the fields); one reader per format
(readers.py). Nothing is dropped: rows a reader could not parse carry
`parse_error`, and a file that cannot be read at all (a damaged Parquet file, no
permission) is skipped and named in `NewRows.unreadable`; the run goes on with the
other files.

Incremental reading: a `Cursor` per file records how much of it earlier runs
consumed (bytes for NDJSON, data rows for CSV, all-or-nothing for Parquet) and
a fingerprint of its head, so appended rows are read once and a rewritten file
is noticed.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from embedloop.errors import InputError, one_line
from embedloop.ingest.readers import CHUNK_BYTES, FORMATS
from embedloop.ingest.schema import FRAME_COLUMNS, LOG_FIELDS, REQUIRED_FIELDS

HEAD_BYTES = 4096


@dataclass(frozen=True)
class Cursor:
    kind: str
    consumed: int  # NDJSON: bytes; CSV: data rows; Parquet: 1 once read
    fingerprint: str  # see _fingerprint (Parquet: sha256 of the whole file)
    lines: int = 0  # lines (NDJSON) or data rows (CSV, Parquet) consumed, for line numbers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cursor:
        return cls(kind=data["kind"], consumed=int(data["consumed"]),
                   fingerprint=data["fingerprint"], lines=int(data.get("lines", 0)))


@dataclass
class NewRows:
    frame: pd.DataFrame  # LOG_FIELDS + source, line, parse_error; raw values, object dtype
    cursors: dict[str, Cursor]  # updated cursors for every file read (commit after the run)
    notes: list[str]  # things an operator should know (rewritten files, partial lines)
    unreadable: dict[str, str] = field(default_factory=dict)  # file name -> why, skipped


@dataclass
class Ingested:
    """What a run read, once its rows went through validation chunk by chunk."""

    rows: int = 0
    cursors: dict[str, Cursor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)

    def frames(self, chunks: Iterable[NewRows]) -> Iterator[pd.DataFrame]:
        """The chunks' frames, for validation to consume; what each chunk read (rows,
        cursors, notes, unreadable files) is added here as it passes."""
        for chunk in chunks:
            self.rows += len(chunk.frame)
            self.cursors.update(chunk.cursors)
            self.notes += chunk.notes
            self.unreadable.update(chunk.unreadable)
            yield chunk.frame


def discover_log_files(source: str | Path) -> list[Path]:
    """A directory (its supported files, sorted) or a glob pattern."""
    source = str(source)
    path = Path(source)
    if path.is_dir():
        candidates: Iterable[Path] = path.iterdir()
    elif path.is_file():
        candidates = [path]
    else:
        candidates = (Path(p) for p in glob.glob(source, recursive=True))
    if path.is_file() and path.suffix.lower() not in FORMATS:
        raise InputError(f"{source}: {path.suffix or 'a file without extension'} is not a log "
                         f"format embedloop reads ({', '.join(sorted(FORMATS))})")
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in FORMATS)
    if not files and not path.is_dir():
        raise InputError(f"no log files found at {source!r} (expected a directory or a glob "
                         f"matching {', '.join(sorted(FORMATS))} files)")
    return files


def files_not_read(source: str | Path) -> list[Path]:
    """Files in a log directory that are not in a log format (named, so none is missed)."""
    path = Path(source)
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() not in FORMATS)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(path: Path, kind: str, consumed: int) -> str:
    """What must not change under a cursor: the consumed head of an NDJSON file, or a
    CSV file's header line (CSV cursors count rows, not bytes)."""
    with path.open("rb") as f:
        if kind == "csv":
            return _sha256(f.readline())
        return _sha256(f.read(min(consumed, HEAD_BYTES)))


CHUNK_ROWS = 200_000  # rows gathered (from as many files) before a chunk is handed on


def iter_new_rows(files: list[Path], cursors: dict[str, Cursor],
                  column_map: dict[str, str] | None = None,
                  chunk_rows: int | None = CHUNK_ROWS,
                  chunk_bytes: int = CHUNK_BYTES) -> Iterator[NewRows]:
    """What earlier runs have not consumed, in chunks of at least `chunk_rows` rows (the
    last may be smaller; None: one chunk), so that a batch of any size is read and
    validated in bounded memory; files are read `chunk_bytes` at a time. Pure with
    respect to the ledger: each chunk carries the cursors it moved, and the caller
    commits them all when the run ends.
    A file that cannot be read at all is named in `unreadable` and skipped; where it
    can be fingerprinted its cursor is moved too, so it is not tried again until it
    changes. One that fails after a first chunk of it was read (a file bigger than a
    chunk, damaged further on) raises InputError: its earlier rows may already be judged."""
    column_map = column_map or {}
    frames: list[pd.DataFrame] = []
    pending = NewRows(pd.DataFrame(), {}, [], {})

    def handed_on() -> NewRows:
        nonlocal frames, pending
        frames = [f for f in frames if len(f)]
        pending.frame = (frames[0].reset_index(drop=True) if len(frames) == 1 else
                         pd.concat(frames, ignore_index=True).astype(object) if frames
                         else pd.DataFrame(columns=FRAME_COLUMNS))
        chunk, frames, pending = pending, [], NewRows(pd.DataFrame(), {}, [], {})
        return chunk

    for path in files:
        key = str(path.resolve())
        notes: list[str] = []  # the reader's, moved to the chunk they arrive in
        reads = _read_chunks(path, cursors.get(key), column_map, notes,
                             None if chunk_rows is None else chunk_bytes)
        first = True
        held = HeldFields()  # over every chunk of the file: a field may come late
        try:
            for frame, cursor in reads:
                first = False
                held.add(frame)
                pending.notes += notes
                notes.clear()
                frames.append(frame)
                pending.cursors[key] = cursor
                if chunk_rows is not None and sum(map(len, frames)) >= chunk_rows:
                    yield handed_on()
            hint = held.missing_note(path.name, column_map)
            pending.notes += notes + ([hint] if hint else [])
        except (OSError, InputError) as exc:
            why = str(exc) if isinstance(exc, InputError) else one_line(exc)
            if not first:
                raise InputError(f"{path.name}: {why}, after some of its rows were read; "
                                 f"nothing of this run is recorded. Move the file aside "
                                 f"or repair it") from None
            pending.unreadable[path.name] = why  # reported there, not also as a note
            with contextlib.suppress(OSError):  # no permission: tried again next run
                pending.cursors[key] = Cursor(FORMATS[path.suffix.lower()].kind, 0,
                                              UNREADABLE + _sha256(path.read_bytes()))
    yield handed_on()


@dataclass
class HeldFields:
    """Which required fields the parsed rows of a file hold, gathered chunk by chunk."""

    found: set[str] = field(default_factory=set)
    parsed: bool = False  # any row that parsed at all
    source_columns: list[str] = field(default_factory=list)  # as the file names them

    def add(self, frame: pd.DataFrame) -> None:
        parsed = frame["parse_error"].isna().to_numpy()
        self.source_columns = self.source_columns or frame.attrs.get("source_columns", [])
        if not parsed.any():
            return
        self.parsed = True
        self.found |= {f for f in REQUIRED_FIELDS
                       if f not in self.found and (frame[f].notna().to_numpy() & parsed).any()}

    def missing_note(self, name: str, column_map: dict[str, str]) -> str | None:
        """Required fields that no row of the file holds: a file written with other column
        names quarantines every row as missing_*, so say which and how to map them."""
        missing = [f for f in REQUIRED_FIELDS if f not in self.found]
        if not self.parsed or not missing:
            return None
        has = [c for c in self.source_columns if c not in column_map]
        has_text = f"; its columns are {', '.join(has[:12])}" if has else ""
        example = next((c for c in has if c not in LOG_FIELDS), None)
        how = ("map them in embedloop.toml, e.g. [embedloop.column_map] "
               f"{example} = \"{missing[0]}\"" if example
               else "map them with column_map in embedloop.toml")
        if len(missing) == len(REQUIRED_FIELDS):
            return (f"{name}: none of the expected fields ({', '.join(REQUIRED_FIELDS)}) found, "
                    f"so every row is quarantined{has_text}. If they are there under other "
                    f"names, {how}")
        return (f"{name}: no row has {', '.join(missing)}{has_text}. If the file names "
                f"{'it' if len(missing) == 1 else 'them'} differently, {how}")


UNREADABLE = "unreadable:"  # cursor fingerprint prefix: the whole file, as it was skipped


def _read_chunks(path: Path, cursor: Cursor | None, column_map: dict[str, str],
                 notes: list[str], chunk_bytes: int | None) -> Iterator[tuple[pd.DataFrame,
                                                                            Cursor]]:
    """One file's unread rows, chunk by chunk, each with the file's cursor after it;
    nothing when the file holds nothing new."""
    fmt = FORMATS[path.suffix.lower()]
    kind = fmt.kind
    if cursor and cursor.fingerprint.startswith(UNREADABLE):
        if cursor.fingerprint == UNREADABLE + _sha256(path.read_bytes()):
            return  # skipped before and unchanged since
        cursor = None  # changed: a fresh start
    if not fmt.resumable:  # read whole, and again only when the file changes
        fingerprint = _sha256(path.read_bytes())
        if cursor and cursor.fingerprint == fingerprint:
            return
        if cursor:
            notes.append(f"{path.name}: file changed since it was read; reading it again "
                         f"(already-seen event ids are quarantined as duplicates)")
        for read in fmt.chunks(path, 0, 0, column_map, chunk_bytes):
            yield read.frame, Cursor(kind, read.consumed, fingerprint, read.lines)
        return
    size = path.stat().st_size
    if size == 0:  # being created, or left empty by a failed export: said once
        if cursor is None:
            notes.append(f"{path.name}: empty file (0 bytes), nothing to read yet")
            yield pd.DataFrame(columns=FRAME_COLUMNS), Cursor(kind, 0, _sha256(b""), 0)
        return
    start = cursor.consumed if cursor else 0
    first_line = cursor.lines if cursor else 0
    if cursor and start and (_fingerprint(path, kind, start) != cursor.fingerprint
                             or (kind == "ndjson" and size < start)):
        notes.append(f"{path.name}: file was rewritten since it was last read; reading it "
                     f"from the start (already-seen event ids are quarantined as duplicates)")
        start = first_line = 0
    if kind == "ndjson" and start >= size:
        return
    for read in fmt.chunks(path, start, first_line, column_map, chunk_bytes):
        notes.extend(read.notes)
        if read.consumed == start:
            return
        yield read.frame, Cursor(kind, read.consumed, _fingerprint(path, kind, read.consumed),
                                 read.lines)
