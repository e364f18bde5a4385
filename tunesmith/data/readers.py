"""Read JSONL/JSON/CSV/Parquet files, folders and hub datasets into RawRows that remember their file and line.

Files are streamed (JSONL line by line, CSV record by record, a JSON list item by item, Parquet in batches), so
memory follows the rows kept, not the file's size. A row that is not valid JSON, or a CSV
record with the wrong number of fields, does not stop reading: it becomes a Problem, so one run reports every bad
row. A file that cannot be read at all (another encoding, binary, a truncated Parquet) stops with a DataError that
names the file and, where there is one, the line and byte.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from pathlib import Path
from typing import Iterator

from tunesmith.data.rows import Problem, RawRow
from tunesmith.errors import ConfigError, DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def codec(encoding: str) -> str:
    """The codec to decode text files with. utf-8 also reads a leading byte-order mark (Excel and Notepad write
    one), which json would otherwise refuse."""
    try:
        name = codecs.lookup(encoding).name
        "".encode(name)  # refuses codecs that are not text encodings (hex, base64, rot13)
    except (LookupError, UnicodeError):
        raise ConfigError(f"encoding: {encoding!r} is not a text encoding; e.g. utf-8, gbk, utf-16, latin-1") from None
    return "utf-8-sig" if name == "utf-8" else name


def read_path(path: Path, problems: list[Problem], encoding: str = "utf-8-sig") -> Iterator[RawRow]:
    """The rows of a file, or of every data file in a folder (hidden files and folders left out), in order; a folder
    written by datasets' save_to_disk is read as that dataset."""
    if path.is_dir() and _saved_dataset(path):
        yield from _read_saved(path)
        return
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"{path}: folder has no {'/'.join(SUFFIXES)} files")
        for f in files:
            yield from read_path(f, problems, encoding)
        return
    suffix = path.suffix.lower()
    read = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}.get(suffix)
    if read is None:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use {', '.join(SUFFIXES)}")
    try:
        read = _as_written(path, suffix, encoding) or read
        yield from read(path, problems, encoding)
    except UnicodeError:  # a UnicodeDecodeError, or utf-16/utf-32 without their byte-order mark
        raise _decode_error(path, encoding) from None
    except OSError as err:  # unreadable: permissions, a device, a file that vanished
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None


def _as_written(path: Path, suffix: str, encoding: str):
    """The reader for what the file holds when its name says otherwise, two common slips: a JSON list saved as .jsonl,
    and JSON Lines saved as .json (a first line that is a whole object, and another object after it). None: as named.
    Only the first line is read to decide, and only up to 1 MiB (a longer first line: as named)."""
    if suffix not in (".json", ".jsonl"):
        return None
    with path.open(encoding=encoding) as f:
        first = f.read(1)
        while first.isspace():
            first = f.read(1)
        if suffix == ".jsonl":
            return _read_json if first == "[" else None
        if first != "{":
            return None
        line = first + f.readline(1 << 20)
        if not line.endswith("\n") or not isinstance(_loads_or_none(line), dict):
            return None
        after = f.read(1)
        while after.isspace():
            after = f.read(1)
        return _read_jsonl if after == "{" else None


def _loads_or_none(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _read_jsonl(path: Path, problems: list[Problem], encoding: str) -> Iterator[RawRow]:
    with path.open(encoding=encoding) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            data = _parse_json(line, str(path), number, problems)
            if data is not _INVALID:
                yield RawRow(str(path), number, data)


def _read_json(path: Path, problems: list[Problem], encoding: str) -> Iterator[RawRow]:
    """A JSON list of rows, or an object holding one list ({"data": [...]}), streamed item by item."""
    with path.open(encoding=encoding) as f:
        doc = _JsonStream(f)
        try:
            if doc.peek() == "{":  # {"data": [...]} or {"train": [...]}: take the single list inside
                found = False
                for key in doc.members():
                    if doc.peek() != "[":
                        doc.value()  # metadata beside the rows
                    elif found:
                        raise DataError(f"{path}: expected a JSON list of rows (or an object holding one list)")
                    else:
                        found = True
                        for i, item in enumerate(doc.items()):
                            yield RawRow(str(path), f"row {i}", item)
                if not found:
                    raise DataError(f"{path}: expected a JSON list of rows (or an object holding one list)")
            elif doc.peek() == "[":
                for i, item in enumerate(doc.items()):
                    yield RawRow(str(path), f"row {i}", item)
            else:
                data = doc.value()
                raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
            doc.end()
        except _BadJson as err:
            problems.append(Problem(str(path), err.line, "json", err.problem))


class _BadJson(Exception):
    def __init__(self, line: int, problem: str):
        self.line, self.problem = line, problem


class _JsonStream:
    """A JSON document read in chunks. The brackets and commas around rows are walked here and each value is parsed
    by json's own decoder, so what is held is one row and the unread rest of a chunk, whatever the file's size
    (json.dump writes a whole list on one line, so reading by line would not bound it)."""

    CHUNK = 1 << 16
    TAIL = 64  # a value ending this close to the buffer's end may go on in the next chunk ("12" + "3", "1e" + "5")

    def __init__(self, f) -> None:
        self.f, self.buf, self.pos, self.eof = f, "", 0, False
        self.line, self.column = 1, 0  # where buf[0] is in the file (column: characters before it on its line)
        self.decoder = json.JSONDecoder()

    def peek(self) -> str:
        """The next character that is not whitespace, not consumed ("" at the end of the file)."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._read(self.CHUNK):
                return ""

    def items(self) -> Iterator:
        """The values of the list that starts here."""
        self._take("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            if self._take(",]") == "]":
                return

    def members(self) -> Iterator[str]:
        """The keys of the object that starts here; the caller reads (or skips) each key's value."""
        self._take("{")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            if self.peek() != '"':
                raise self._error("Expecting property name enclosed in double quotes", self.pos)
            key = self.value()
            self._take(":")
            yield key
            if self._take(",}") == "}":
                return

    def value(self):
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                cut = err.pos >= len(self.buf) - self.TAIL or err.msg.startswith("Unterminated string")
                if cut and self._read(len(self.buf) - self.pos):  # as much again: a long row costs O(its length)
                    continue
                raise self._error(err.msg, err.pos) from None
            except RecursionError:
                raise _BadJson(self._where(self.pos)[0], "not readable JSON (nested too deeply)") from None
            except ValueError as err:  # an integer over Python's 4,300-digit limit (the tail is advice for coders)
                raise _BadJson(self._where(self.pos)[0], f"not readable JSON ({str(err).partition(':')[0]})") from None
            if end >= len(self.buf) - self.TAIL and self._read(len(self.buf) - self.pos):
                continue
            self.pos = end
            return value

    def end(self) -> None:
        if self.peek():
            raise self._error("Extra data", self.pos)

    def _take(self, allowed: str) -> str:
        char = self.peek()
        if not char or char not in allowed:
            expected = {"[": "'['", "{": "'{'", ":": "':' delimiter"}.get(allowed, "',' delimiter")
            raise self._error(f"Expecting {expected}" if char else "Expecting value", self.pos)
        self.pos += 1
        return char

    def _read(self, size: int) -> bool:
        """Append up to `size` more characters, dropping what was parsed; False (and nothing moved) at the end."""
        more = "" if self.eof else self.f.read(max(size, self.CHUNK))
        if not more:
            self.eof = True
            return False
        done = self.buf[:self.pos]
        newline = done.rfind("\n")
        self.line += done.count("\n")
        self.column = len(done) - newline - 1 if newline >= 0 else self.column + len(done)
        self.buf, self.pos = self.buf[self.pos:] + more, 0
        return True

    def _where(self, pos: int) -> tuple[int, int]:
        newline = self.buf.rfind("\n", 0, pos)
        column = pos - newline if newline >= 0 else self.column + pos + 1
        return self.line + self.buf.count("\n", 0, pos), column

    def _error(self, msg: str, pos: int) -> _BadJson:
        line, column = self._where(pos)
        return _BadJson(line, f"not valid JSON ({msg} at column {column}); the rows after it were not read")


_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


_INVALID = object()


def _parse_json(text: str, source: str, line: int | None, problems: list[Problem]):
    """The parsed value, or _INVALID with a problem at `line` (or at the error's own line in a whole document)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        problem = f"not valid JSON ({err.msg} at column {err.colno})"
        line = line or err.lineno
    except RecursionError:
        problem = "not readable JSON (nested too deeply)"
    except ValueError as err:  # an integer over Python's 4,300-digit limit (the message's tail is advice for coders)
        problem = f"not readable JSON ({str(err).partition(':')[0]})"
    problems.append(Problem(source, line or 1, "json", problem))
    return _INVALID


def _read_csv(path: Path, problems: list[Problem], encoding: str) -> Iterator[RawRow]:
    # csv refuses fields over 128 KiB by default; a long answer is a valid row (load_rows' max_chars judges length).
    csv.field_size_limit(2**31 - 1)
    with path.open(encoding=encoding, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            for record in reader:
                if not record:  # a blank line, as csv.DictReader skips it
                    continue
                # Line numbers count the header, so they match what an editor shows.
                if len(record) != len(header):
                    problems.append(Problem(str(path), reader.line_num, "row", f"{len(record)} field(s), but the "
                                            f"header has {len(header)}; quote fields that hold a comma or a line break"))
                    continue
                yield RawRow(str(path), reader.line_num, dict(zip(header, record)))
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None


def _read_parquet(path: Path, problems: list[Problem], encoding: str) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield RawRow(str(path), f"row {index}", _unfilled(row))
                index += 1
    except pa.ArrowException as err:
        raise DataError(f"{path}: not a readable Parquet file ({err}); is it complete?") from None


def _unfilled(row):
    """An Arrow row as it was written: Arrow gives every row every column of its table, and every message every key
    any message has, as None where it had none (a `loss: false` on one message puts `loss: None` on all the others; a
    file mixing Alpaca and messages rows gives each a None `messages` or `instruction`). Those Nones are dropped, in
    the row and in the objects of its lists (messages, turns), so formats are detected and checked per row as in JSONL."""
    if not isinstance(row, dict):
        return row
    out = {}
    for key, value in row.items():
        if value is None:
            continue
        if isinstance(value, list):
            value = [{k: v for k, v in item.items() if v is not None} if isinstance(item, dict) else item
                     for item in value]
        out[key] = value
    return out


# Files that start with these bytes are not text in any encoding: say what they are instead of suggesting one.
PACKED = {b"\x1f\x8b": ("gzip-compressed", "gunzip it first"), b"PK\x03\x04": ("a zip archive", "unzip it first"),
          b"\x28\xb5\x2f\xfd": ("zstd-compressed", "unzstd it first"), b"PAR1": ("a Parquet file", "name it .parquet")}


def _decode_error(path: Path, encoding: str) -> DataError:
    with path.open("rb") as f:
        head = f.read(4096)
    boms = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    if encoding in ("utf-16", "utf-32") and not head.startswith(boms):  # Python's decoders need the mark to start
        return DataError(f"{path}:1: not {encoding} text (byte 0: no byte-order mark); pass --encoding {encoding}-le "
                         f"(Windows' 'Unicode') or {encoding}-be")
    line, offset = _first_undecodable(path, encoding)
    with path.open("rb") as f:
        f.seek(offset)
        bad = f.read(1)
    packed = next((kind for magic, kind in PACKED.items() if head.startswith(magic)), None)
    if packed:
        hint = f"it is {packed[0]}, not {path.suffix} text: {packed[1]}"
    elif encoding.startswith(("utf-16", "utf-32")):
        hint = f"is it {encoding} text at all?"
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        hint = "it starts with a UTF-16 byte-order mark: pass --encoding utf-16"
    elif b"\x00" in head:
        hint = f"it holds NUL bytes: is it UTF-16 text (pass --encoding utf-16) or not {path.suffix} text at all?"
    else:
        hint = "pass --encoding with the file's encoding (e.g. gbk, big5, shift_jis, latin-1)"
    name = "utf-8" if encoding == "utf-8-sig" else encoding
    return DataError(f"{path}:{line}: not {name} text (byte {offset}: 0x{bad.hex() or '??'}); {hint}")


def _first_undecodable(path: Path, encoding: str) -> tuple[int, int]:
    """(line, byte offset) of the first bytes `encoding` cannot decode. The file is read again in 64 KiB chunks
    and the failing chunk byte by byte, so a large file is never held whole."""
    decoder = codecs.getincrementaldecoder(encoding)()
    line, offset = 1, 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            state = decoder.getstate()
            try:
                line += decoder.decode(chunk).count("\n")
                offset += len(chunk)
                continue
            except UnicodeError:
                decoder.setstate(state)
            for i in range(len(chunk)):
                pending = len(decoder.getstate()[0])  # bytes of a character begun earlier
                try:
                    line += decoder.decode(chunk[i:i + 1]).count("\n")
                except UnicodeError as err:  # other codecs (idna) raise the base class, without a position
                    return line, offset + i - pending + getattr(err, "start", 0)
            offset += len(chunk)
    return line, offset - len(decoder.getstate()[0])  # the file ends inside a character


def _saved_dataset(path: Path) -> bool:
    """A folder datasets' save_to_disk wrote: a Dataset (state.json + dataset_info.json) or a DatasetDict."""
    return ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()) or (
        path / "dataset_dict.json").is_file()


def _read_saved(path: Path) -> Iterator[RawRow]:
    """The rows of a save_to_disk folder; of a DatasetDict, its train split (or its only one)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises many types; the user needs the folder and the reason
        raise DataError(f"{path}: could not load the dataset save_to_disk wrote there: {err}") from None
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds)) if len(ds) == 1 else None
        if split is None:
            raise DataError(f"{path}: a DatasetDict with splits {', '.join(ds)} and no train; pass the split's "
                            f"folder, e.g. {path / next(iter(ds))}")
        ds = ds[split]
    return (RawRow(str(path), f"row {i}", _unfilled(row)) for i, row in enumerate(ds))


def read_hub(dataset_id: str, split: str = "train") -> Iterator[RawRow]:
    """A Hugging Face dataset id (`org/name` or `org/name:split`). Offline, fail at once with what to do."""
    from tunesmith.hub import require_hub_or_cache

    require_hub_or_cache(dataset_id, kind="dataset")
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # datasets raises many types; the user needs the id and the reason
        raise DataError(f"{dataset_id}: could not load hub dataset: {err}") from None
    return (RawRow(dataset_id, f"row {i}", _unfilled(row)) for i, row in enumerate(ds))  # read from Arrow as used
