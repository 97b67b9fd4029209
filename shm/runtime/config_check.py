"""Every config error in one pass: while ``collecting()``, shm.runtime.config's checks
``report`` an error and go on with the key's default, so an operator sees all of them at
once, each with its key path; an unknown key gets a did-you-mean. Outside ``collecting``
``report`` raises, as before."""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from contextvars import ContextVar

from shm.runtime.config_types import ConfigError

_errors: ContextVar[list | None] = ContextVar("config_errors", default=None)


class ConfigErrors(ConfigError):
    """Several config errors; ``errors`` holds each (key path + message), ``key`` the first's."""

    def __init__(self, errors: list[ConfigError]):
        ValueError.__init__(self, f"{len(errors)} errors:\n" + "\n".join(f"  {e}" for e in errors))
        self.key = errors[0].key
        self.errors = tuple(errors)


def report(err: ConfigError) -> None:
    """Record ``err`` while collecting, else raise it."""
    errs = _errors.get()
    if errs is None:
        raise err
    errs.append(err)


@contextmanager
def collecting():
    """Collect what ``report`` gets inside the block; on leaving, raise the one error as it
    is, or ConfigErrors for several (in the order they were found)."""
    errs: list = []
    token = _errors.set(errs)
    try:
        yield errs
    except ConfigError as e:            # a check that cannot go on: the last error
        errs.append(e)
    finally:
        _errors.reset(token)
    if len(errs) == 1:
        raise errs[0]
    if errs:
        raise ConfigErrors(errs)


def attempt(fn, *args):
    """``fn(*args)``, or None after reporting the ConfigError it raised."""
    try:
        return fn(*args)
    except ConfigError as e:
        report(e)
        return None


def unknown_key(path: str, key, allowed) -> ConfigError:
    """``path`` is the key's full dotted path; did-you-mean from the allowed names."""
    close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(path, f"unknown key; {hint}(allowed: {', '.join(sorted(allowed))})")
