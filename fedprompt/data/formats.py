"""A site's own data file: how it is read (``DataFormat``: columns, encoding, bad rows) and what reading it does.

A user's CSV, TSV or JSONL export is untrusted input: it is decoded in the encoding it is said to be in, by
default ``auto`` (the encoding a byte-order mark names, else strict UTF-8: no guess among the 8-bit encodings,
whose detectors read a short Latin-1 file as cp1250; one error naming the byte and ``--encoding`` otherwise),
parsed by a real CSV reader (quoted fields may hold commas, newlines and
carriage returns), and every record is checked.  A record without a valid label is refused, with the count
and the first line numbers, unless ``skip_bad_rows`` says to drop it; empty texts are dropped; exact text
duplicates keep their first record, and a text given two different labels is a conflict that keeps neither.
``LoadReport`` counts each of these, so ``fedprompt data prepare`` can say what it did instead of silently
writing a class nobody meant.  A Parquet file or a ``datasets`` directory (``save_to_disk``) goes the same way
through ``arrow.read_rows`` (the ``[formats]`` extra): the same columns, bad rows, duplicates and report.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedprompt.data import arrow
from fedprompt.errors import ConfigError, FileError, quoted
from fedprompt.files import decode_text, read_bytes

#: The suffixes a site's own data file may have (or a ``datasets`` directory), and the delimiter of the tabular
#: text ones.
DELIMITERS = {".csv": ",", ".tsv": "\t"}
SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
#: The default encoding: what a byte-order mark says, else UTF-8.
AUTO = "auto"
#: Byte-order marks and the codec that reads (and drops) each; UTF-32's before UTF-16's, which begin them.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
#: How many line numbers of bad rows an error message lists.
SHOWN_LINES = 5
#: What a bad row of a CSV or TSV file may come from.
QUOTE_HINT = ("a line break or carriage return inside an unquoted text splits its row, so quote such texts, or ")
#: The longest column name accepted, in characters.
MAX_COLUMN = 256


@dataclass(frozen=True)
class Example:
    """One labelled text (the label is empty in an unlabelled pool)."""

    text: str
    label: str


@dataclass(frozen=True)
class DataFormat:
    """How a site's own data file is read: one definition behind ``--text-column``,
    ``--label-column``, ``--encoding`` and ``--skip-bad-rows``, a simulation file's ``[simulation.format]`` and a
    participant's ``[participant.format]``.  Column names are 1-256 characters and differ; ``encoding`` (of the
    text formats; Parquet and Arrow hold UTF-8) is ``auto`` (a byte-order mark's encoding, else UTF-8) or any
    text encoding Python knows (``utf-8``, ``latin-1``, ``cp1252``, ``utf-16``).  ``skip_bad_rows`` drops
    records without a valid label (and says how many) instead of refusing the file."""

    text_column: str = "text"
    label_column: str = "label"
    encoding: str = AUTO
    skip_bad_rows: bool = False

    def validate(self, prefix: str) -> None:
        for key in ("text_column", "label_column"):
            value = getattr(self, key)
            if not 0 < len(value) <= MAX_COLUMN:
                raise ConfigError(f"{prefix}.{key}: must be 1 to {MAX_COLUMN} characters, got {quoted(value)}")
        if self.text_column == self.label_column:
            raise ConfigError(f"{prefix}.label_column: must differ from text_column, both are {quoted(self.text_column)}")
        if self.encoding == AUTO:
            return
        try:
            b"a".decode(self.encoding)  # an unknown name, or a codec that is not bytes to text ("hex", "rot13")
        except UnicodeDecodeError:
            pass  # a text encoding this byte alone cannot be (utf-16)
        except LookupError:
            raise ConfigError(f"{prefix}.encoding: {quoted(self.encoding)} is not a text encoding "
                              "(e.g. utf-8, latin-1, cp1252, utf-16)") from None


@dataclass(frozen=True)
class LoadReport:
    """What reading a file did: records read, and those dropped as bad (no valid label; their first line
    numbers), empty, repeated, or conflicting (a text seen with two labels: ``conflicts`` texts, all their
    ``conflict_rows`` records dropped)."""

    rows: int = 0
    bad_rows: int = 0
    bad_lines: tuple[int, ...] = ()
    empty: int = 0
    duplicates: int = 0
    conflicts: int = 0
    conflict_rows: int = 0
    #: How the text was decoded, when not plain UTF-8 (``utf-16 (byte-order mark)``, a named ``latin-1``).
    encoding: str = ""
    #: What ``bad_lines`` count: a text file's lines, or a Parquet file's or ``datasets`` directory's rows.
    numbered: str = "line"


@dataclass(frozen=True)
class Loaded:
    """A file's examples, checked and deduplicated, with the report of what was dropped."""

    examples: list[Example]
    report: LoadReport


@dataclass(frozen=True)
class _Record:
    line: int
    text: str | None
    label: str | None


def load_file(path: str | Path, fmt: DataFormat | None = None, *, dedupe: bool = True) -> Loaded:
    """Read a site's own labelled file per ``fmt`` (default: UTF-8, columns ``text`` and ``label``).

    Anything that is not such a file is a ``FileError`` naming it: missing, another suffix, bytes that are not
    ``fmt.encoding`` (with the byte offset and line), invalid JSON, a header or records without the columns,
    and records without a valid label unless ``fmt.skip_bad_rows``.  Empty texts are dropped, and with
    ``dedupe`` repeated and conflicting ones (``clean``): a dataset is deduplicated before it is split, while a
    site's own split files (``shards.load_site``) keep every record they hold, since the site weights its
    update by them."""
    fmt = fmt or DataFormat()
    p = Path(path)
    records, encoding = _records(p, fmt)
    numbered = "row" if p.is_dir() or p.suffix == ".parquet" else "line"
    bad = [r.line for r in records if r.text is None or not r.label]
    if bad and len(bad) == len(records):
        raise FileError(f"dataset file {p}: no row has a valid label in column {quoted(fmt.label_column)}; name the "
                        "label column (--label-column)")
    if bad and not fmt.skip_bad_rows:
        lines = ", ".join(str(n) for n in bad[:SHOWN_LINES]) + (", ..." if len(bad) > SHOWN_LINES else "")
        raise FileError(
            f"dataset file {p}: {len(bad)} of {len(records)} rows have no valid label in column "
            f"{quoted(fmt.label_column)} ({numbered}{'s' if len(bad) > 1 else ''} "
            f"{lines}); {QUOTE_HINT if p.suffix in DELIMITERS else ''}pass --skip-bad-rows to drop these rows")
    good = [Example(r.text.strip(), r.label) for r in records if r.text is not None and r.label]
    if dedupe:
        examples, dropped = clean(good)
    else:
        examples = [ex for ex in good if ex.text]
        dropped = (len(good) - len(examples), 0, 0, 0)
    return Loaded(examples, LoadReport(len(records), len(bad), tuple(bad[:SHOWN_LINES]), *dropped, encoding, numbered))


def load_unlabelled(path: str | Path, fmt: DataFormat | None = None) -> list[Example]:
    """A site's pool of unlabelled texts (``unlabelled.jsonl``): any label is ignored and empty texts are
    dropped; the examples carry an empty label."""
    records, _ = _records(Path(path), fmt or DataFormat())
    return [Example(r.text.strip(), "") for r in records if r.text is not None and r.text.strip()]


def clean(examples: Iterable[Example]) -> tuple[list[Example], tuple[int, int, int, int]]:
    """Drop empty texts, repeated texts (the first is kept) and conflicting ones (a text seen with two labels:
    none kept), so a text cannot sit in both the train and the test split nor teach both labels.

    Returns the examples and the counts ``(empty, duplicates, conflicting texts, their records)``."""
    rows = list(examples)
    labels: dict[str, set[str]] = {}
    for ex in rows:
        if ex.text:
            labels.setdefault(ex.text, set()).add(ex.label)
    conflicted = {text for text, seen in labels.items() if len(seen) > 1}
    kept: list[Example] = []
    taken: set[str] = set()
    for ex in rows:
        if ex.text and ex.text not in conflicted and ex.text not in taken:
            taken.add(ex.text)
            kept.append(ex)
    empty = sum(1 for ex in rows if not ex.text)
    conflict_rows = sum(1 for ex in rows if ex.text in conflicted)
    return kept, (empty, len(rows) - len(kept) - empty - conflict_rows, len(conflicted), conflict_rows)


def _records(p: Path, fmt: DataFormat) -> tuple[list[_Record], str]:
    """The file's records, and how its text was decoded when not plain UTF-8."""
    if arrow.is_datasets_dir(p) or p.suffix == ".parquet":
        return _objects(arrow.read_rows(p, fmt.text_column, fmt.label_column), p, fmt), ""
    if p.is_dir():
        raise FileError(f"dataset {p} is a directory but not a datasets one (no {arrow.STATE} or {arrow.INFO}); "
                        "give a .csv, .tsv, .jsonl or .parquet file, or a datasets save_to_disk directory")
    if p.suffix not in SUFFIXES:
        raise FileError(f"dataset file {p}: unsupported format {quoted(p.suffix)} (use .csv, .tsv, .jsonl or "
                        ".parquet, or a datasets save_to_disk directory)")
    text, encoding = _decode(read_bytes(p, "dataset file"), p, fmt.encoding)
    if p.suffix in DELIMITERS:
        return _table(text, p, fmt), encoding
    return _json_lines(text, p, fmt), encoding


def _decode(data: bytes, p: Path, encoding: str) -> tuple[str, str]:
    """``data`` as text: with ``auto``, in the encoding a byte-order mark names, else UTF-8; with a named encoding,
    in that one (a UTF-8 byte-order mark dropped).  Returns the text and how it was decoded, when not UTF-8."""
    hint = "save it as UTF-8 or name its encoding (--encoding, e.g. latin-1)"
    if encoding == AUTO:
        for bom, codec in BOMS:
            if data.startswith(bom):
                return decode_text(data, p, "dataset file", codec, hint), f"{codec.removesuffix('-sig')} (byte-order mark)"
        return decode_text(data, p, "dataset file", "utf-8", hint), ""
    if codecs.lookup(encoding).name == "utf-8" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        hint = "it starts with a UTF-16 byte-order mark, so name that encoding (--encoding utf-16, or auto)"
    text = decode_text(data, p, "dataset file", encoding, hint)
    return text, "" if codecs.lookup(encoding).name == "utf-8" else encoding


def _value(value: object) -> str | None:
    """A text or label as read: a string, or an integer (JSON); anything else is no value."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _json_lines(text: str, p: Path, fmt: DataFormat) -> list[_Record]:
    objects: list[tuple[int, object]] = []
    for number, line in enumerate(text.split("\n"), 1):  # only \n ends a record; texts may hold U+2028
        if line.strip():
            try:
                objects.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise FileError(f"{p}:{number}: invalid JSON ({exc.msg})") from exc
    return _checked(objects, p, fmt)


def _objects(rows: list[dict[str, object]], p: Path, fmt: DataFormat) -> list[_Record]:
    """A Parquet file's or ``datasets`` directory's rows, numbered from 1, checked as JSON lines are."""
    return _checked(list(enumerate(rows, 1)), p, fmt)


def _checked(objects: list[tuple[int, object]], p: Path, fmt: DataFormat) -> list[_Record]:
    """Numbered records (a mapping each, else a bad row) as ``_Record``s; none with a text is an error."""
    records: list[_Record] = []
    for number, obj in objects:
        if not isinstance(obj, dict):
            records.append(_Record(number, None, None))
        elif fmt.text_column not in obj and "messages" in obj:
            records.append(_chat_record(number, obj["messages"]))
        else:
            label = _value(obj.get(fmt.label_column))
            records.append(_Record(number, _value(obj.get(fmt.text_column)), label.strip() if label else None))
    if records and all(r.text is None for r in records):
        raise FileError(f"dataset file {p}: no record has a text in column {quoted(fmt.text_column)}; name the "
                        "text and label columns (--text-column, --label-column)")
    return records


def chat_messages(text: str) -> list[dict[str, str]] | None:
    """The chat messages a prompt holds (``_chat_record`` wrote them as JSON), or None for a plain text."""
    try:
        value = json.loads(text) if text.startswith("[") else None
    except json.JSONDecodeError:
        return None
    ok = isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and set(m) == {"role", "content"} and all(isinstance(v, str) for v in m.values())
        for m in value)
    return value if ok else None


def _chat_record(number: int, messages: object) -> _Record:
    """A chat-format row (``{"messages": [{"role", "content"}, ...]}``, as Hugging Face's chat datasets): the
    messages before the last are the prompt (kept as JSON, for the tokenizer's chat template), the last, an
    assistant's, the completion; anything else is a bad row."""
    if not isinstance(messages, list) or len(messages) < 2:
        return _Record(number, None, None)
    prompt = [{"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else {} for m in messages]
    text = json.dumps(prompt[:-1], ensure_ascii=False)
    last = prompt[-1]
    if chat_messages(text) is None or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        return _Record(number, None, None)
    return _Record(number, text, str(last["content"]).strip() or None)


class _Lines:
    """The text's physical lines for ``csv.reader``, counting the newlines handed out, so a record's line number
    is the one an editor shows (a bare carriage return ends a CSV record but not an editor's line)."""

    def __init__(self, text: str) -> None:
        self._lines = io.StringIO(text, newline="")
        self.newlines = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.newlines += line.count("\n")
        return line


def _table(text: str, p: Path, fmt: DataFormat) -> list[_Record]:
    lines = _Lines(text)
    reader = csv.reader(lines, delimiter=DELIMITERS[p.suffix])
    line = 1
    try:
        header = next(reader, None)
        if header is None:
            raise FileError(f"dataset file {p} is empty; it needs a header naming its text and label columns")
        header = [name.strip() for name in header]
        missing = [c for c in (fmt.text_column, fmt.label_column) if c not in header]
        if missing:
            shown = ", ".join(quoted(name, 32) for name in header[:8]) + (", ..." if len(header) > 8 else "")
            raise FileError(f"dataset file {p}: no column {' or '.join(quoted(c) for c in missing)} in its header "
                            f"({shown}); name the text and label columns (--text-column, --label-column)")
        at_text, at_label = header.index(fmt.text_column), header.index(fmt.label_column)
        records: list[_Record] = []
        while True:
            line = lines.newlines + 1
            row = next(reader, None)
            if row is None:
                return records
            if not row:  # a blank line
                continue
            if len(row) != len(header):
                records.append(_Record(line, None, None))
            else:
                records.append(_Record(line, row[at_text], row[at_label].strip()))
    except csv.Error as exc:
        raise FileError(f"dataset file {p}: not a {p.suffix[1:].upper()} table at line {line} ({exc})") from exc
