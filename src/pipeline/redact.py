"""Passwords out of everything a command prints: `mask` on a text, `masked_output` on the
process's stdout and stderr.

A password can reach a printed line in many ways: a URI typed as an override, echoed by Hydra's
"Error executing job with overrides: [...]" (written straight to sys.stderr), by its launchers'
"#0 : tracking.uri=..." lines, inside an exception's text or a traceback. So the streams
themselves mask, not each message: whatever is written through sys.stdout / sys.stderr (print,
logging's stream handlers made after the swap, tracebacks, warnings) shows `user:***@`. A leaf:
imports nothing of the pipeline.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any, TextIO

# scheme://user:password@ -> scheme://user:***@ (the password ends at the last char before '@';
# spaces and quotes end it too, so two URIs on one line stay apart).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)[^\s@'\"]+@")
# ...?password=secret&... (libpq and SQLAlchemy take the password as a query parameter too)
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd)=)[^&\s'\"]+", re.IGNORECASE)


def mask(text: str) -> str:
    """`text` with the password of every URI in it replaced by ***."""
    if "@" not in text and "=" not in text:  # the common line: nothing to scan
        return text
    return _QUERY.sub(r"\g<head>***", _USERINFO.sub(r"\g<head>***@", text))


class MaskedStream:
    """A text stream that masks what is written to it; everything else is the wrapped stream's
    (isatty, fileno, encoding, buffer ...)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(mask(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def masked_output() -> Iterator[None]:
    """sys.stdout and sys.stderr mask passwords inside the block (restored after it)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = MaskedStream(sys.stdout), MaskedStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
