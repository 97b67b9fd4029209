"""Reading operator-named text files (rule files, list files) without trusting the name.

Only a regular file is read: it is opened with O_NONBLOCK (a FIFO cannot block the open) and
checked with fstat after the open (no window between check and read); at most ``max_bytes``
are read, so /dev/zero or a file that grows cannot exhaust memory. Error messages quote file
content only through ``excerpt``: a few printable characters, never a whole line of a file
that was not meant to be read (``list-add file=/etc/shadow``).
"""
from __future__ import annotations

import os
import stat


class TextFileError(OSError):
    """The file cannot be used; the message names the path and why."""


def read_text_file(path: str, max_bytes: int, what: str = "file") -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise TextFileError(f"{path}: cannot open {what}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TextFileError(f"{path}: {what} is not a regular file ({_kind(st.st_mode)})")
        if st.st_size > max_bytes:
            raise TextFileError(f"{path}: {what} of {st.st_size} bytes is over the limit of {max_bytes} bytes")
        chunks, n = [], 0
        while n <= max_bytes:
            b = os.read(fd, min(1 << 20, max_bytes + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
        if n > max_bytes:
            raise TextFileError(f"{path}: {what} grew over the limit of {max_bytes} bytes while read")
    except TextFileError:
        raise
    except OSError as e:
        raise TextFileError(f"{path}: cannot read {what}: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextFileError(f"{path}: {what} is not UTF-8 text (byte {e.start})") from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def excerpt(text: str, max_chars: int = 40) -> str:
    """At most ``max_chars`` printable characters of ``text`` (others become '?'), quoted,
    with '...' when cut: safe to put in an error message."""
    s = "".join(c if c.isprintable() else "?" for c in str(text)[:max_chars])
    return repr(s) + ("..." if len(str(text)) > max_chars else "")
