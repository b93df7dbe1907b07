"""The files a user names on the command line or in a config: read and checked with ``FileError`` naming the file.

A missing file, a directory where a file belongs, bytes that are not UTF-8 (a Latin-1 CSV, a binary given by
mistake) and an output path under a regular file each become one typed error saying which file and what is
wrong, so the CLI prints one line instead of a traceback, and a daemon refuses its input by name.
"""

from __future__ import annotations

from pathlib import Path

from fedprompt.errors import FileError


def read_bytes(path: str | Path, what: str, limit: int | None = None) -> bytes:
    """The bytes of ``path``; ``what`` names it in the error ("job config", "dataset file"). With ``limit``, a
    file larger than that many bytes is refused after reading no more than one byte past it."""
    try:
        with Path(path).open("rb") as f:
            data = f.read(-1 if limit is None else limit + 1)
    except OSError as exc:
        raise FileError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if limit is not None and len(data) > limit:
        raise FileError(f"{what} {path}: larger than the limit of {limit} bytes")
    return data


def decode_text(data: bytes, path: str | Path, what: str, encoding: str = "utf-8",
                hint: str = "save it as UTF-8") -> str:
    """``data`` (read from ``path``) as text in ``encoding``; otherwise the error gives the byte, its offset and
    its line, and ``hint`` (what the user can do)."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        name = "UTF-8" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
        raise FileError(f"{what} {path} is not {name} text (byte 0x{data[exc.start]:02x} on line {line}, "
                        f"at offset {exc.start}); {hint}") from exc


def read_text(path: str | Path, what: str, limit: int | None = None) -> str:
    """The UTF-8 text of ``path``, or ``FileError`` naming it (missing, unreadable, over ``limit`` bytes, not
    UTF-8)."""
    return decode_text(read_bytes(path, what, limit), path, what)


def writable(path: str | Path, what: str, directory: bool = False) -> Path:
    """Check, before any work is done, that ``path`` can be created: no regular file stands where it or one of
    its parent directories must be (``directory``: ``path`` itself is a directory to write into)."""
    target = Path(path)
    if directory and target.exists() and not target.is_dir():
        raise FileError(f"{what} {target}: exists and is not a directory")
    if not directory and target.is_dir():
        raise FileError(f"{what} {target}: is a directory; give a file name")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileError(f"{what} {target}: {parent} is not a directory")
            break
    return target
