"""The serving ruleset, recorded beside the journal so that a restart serves the rules that
were serving before it, reloads included.

    {journal.dir}/rules/            0700 (shm.runtime.securedir)
        active.json                 {"configured": rules.files when it was written,
                                     "files": [{"path", "sha256"}, ...], "label"}   0600, atomic
        <sha256>/<file name>        the bytes of each recorded rule file as it was compiled, 0600

Written at every start and before every reload publishes (a reload that cannot be recorded is
refused). At start (``files_at_start``):
- no record, or the configured rule files (rules.files, or `serve --rules`) are not the ones
  recorded as configured: the configured files. A changed config is the newer decision.
- the record's files are the configured ones (no reload replaced them): the configured
  files, as they are now (editing a configured file and restarting takes the edit).
- a reload replaced them: the recorded files. One whose content is unchanged is read from its
  path; one that changed or vanished since (a reload from /tmp, a file edited but not
  reloaded) is read from its recorded copy, and the log says so: the engine serves exactly
  the rules it served before the restart, never rules nobody reloaded. A copy that is missing
  or does not match its hash stops the start (a damaged state directory is reported, never
  skipped). `risk-engine reload` then takes the new content.
With journal.enabled: false nothing is recorded: a restart serves rules.files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rules.loader import MAX_RULE_FILE_BYTES
from shm.runtime.securedir import ensure_private_dir, read_private_file, write_private_file
from shm.runtime.textfile import TextFileError, read_text_file

RECORD_DIR = "rules"
RECORD = "active.json"


class RecordError(ValueError):
    """The record cannot be trusted or written; the message names the file and the way out."""


@dataclass(frozen=True)
class RuleText:
    path: str        # the rule file as the operator named it
    source: str      # where it was read from: ``path``, or its recorded copy
    sha256: str
    text: str


def record_dir(cfg) -> Path | None:
    d = cfg.durability
    return Path(d.journal_dir) / RECORD_DIR if d.journal_enabled else None


def read_rules(pairs) -> list[RuleText]:
    """Read (path, source) pairs as the compiler would (regular files, size-limited).
    Raises shm.runtime.textfile.TextFileError naming the file."""
    out = []
    for path, source in pairs:
        text = read_text_file(source, MAX_RULE_FILE_BYTES, "rule file")
        out.append(RuleText(path, source, hashlib.sha256(text.encode()).hexdigest(), text))
    return out


def load_record(cfg) -> dict | None:
    """The record, checked; None when there is none. Raises RecordError when it is damaged."""
    rdir = record_dir(cfg)
    if rdir is None or not (rdir / RECORD).exists():
        return None
    path = rdir / RECORD
    try:
        rec = json.loads(read_private_file(path))
        ok = isinstance(rec, dict) and isinstance(rec.get("configured"), list) and \
            isinstance(rec.get("files"), list) and rec["files"] and \
            all(isinstance(e, dict) and isinstance(e.get("path"), str) and
                isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64 and
                all(c in "0123456789abcdef" for c in e["sha256"]) for e in rec["files"])
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: cannot read the record of the serving rules: {e}; remove "
                          f"it to start with rules.files") from None
    if not ok:
        raise RecordError(f"{path}: the record of the serving rules is damaged; remove it to "
                          f"start with rules.files")
    return rec


def _copy_path(rdir: Path, path: str, sha256: str) -> Path:
    return rdir / sha256 / os.path.basename(path)


def files_at_start(cfg, log) -> list[tuple[str, str]]:
    """(path, source) of the rule files to start with (the module doc says which)."""
    configured = [(f, f) for f in cfg.rules.files]
    rec = load_record(cfg)
    if rec is None:
        return configured
    recorded = [e["path"] for e in rec["files"]]
    if rec["configured"] != list(cfg.rules.files):
        if recorded != rec["configured"]:
            log(f"risk-engine: rules: not restoring the reloaded ruleset {rec.get('label')} "
                f"({', '.join(recorded)}): the configured rule files changed since; serving them")
        return configured
    if recorded == list(cfg.rules.files):
        return configured
    rdir, out = record_dir(cfg), []
    for e in rec["files"]:
        try:
            now = read_rules([(e["path"], e["path"])])[0].sha256
        except TextFileError:
            now = None
        if now == e["sha256"]:
            out.append((e["path"], e["path"]))
            continue
        copy = _copy_path(rdir, e["path"], e["sha256"])
        try:
            ok = read_rules([(e["path"], str(copy))])[0].sha256 == e["sha256"]
        except TextFileError:
            ok = False
        if not ok:
            raise RecordError(f"{copy}: the recorded copy of {e['path']} (sha256 {e['sha256']}) "
                              f"is missing or damaged and the file {'vanished' if now is None else 'changed'}; "
                              f"the rules served before the restart cannot be restored. Remove "
                              f"{rdir / RECORD} to start with rules.files")
        log(f"risk-engine: rules: {e['path']} {'vanished' if now is None else 'changed'} since it "
            f"was reloaded; serving its recorded copy {copy} (sha256 {e['sha256'][:16]}); "
            f"`risk-engine reload --rules {e['path']}` takes what the file holds now")
        out.append((e["path"], str(copy)))
    log(f"risk-engine: rules: restoring the ruleset reloaded before the restart, {rec.get('label')} "
        f"({', '.join(recorded)}), recorded in {rdir / RECORD}")
    return out


def write_record(cfg, rules: list[RuleText], label: str, keep=()) -> str | None:
    """Record ``rules`` as the serving ruleset (copies first, then active.json atomically);
    remove copies neither recorded now nor named in ``keep`` (sources still in use). The
    record's path, or None when the journal is off. Raises OSError."""
    rdir = record_dir(cfg)
    if rdir is None:
        return None
    ensure_private_dir(rdir, "journal.dir/rules")
    wanted = set()
    for r in rules:
        copy = _copy_path(rdir, r.path, r.sha256)
        wanted.add(copy)
        if not copy.exists():
            ensure_private_dir(copy.parent, "journal.dir/rules")
            write_private_file(copy, r.text.encode())
    rec = {"configured": list(cfg.rules.files), "label": label,
           "files": [{"path": r.path, "sha256": r.sha256} for r in rules]}
    write_private_file(rdir / RECORD, json.dumps(rec, indent=1).encode())
    in_use = wanted | {Path(k) for k in keep}
    for d in rdir.iterdir():
        if d.is_dir() and not d.is_symlink() and not any(p.parent == d for p in in_use):
            shutil.rmtree(d, ignore_errors=True)
    return str(rdir / RECORD)
