"""Compiler diagnostics: every error carries file, line, column and the rule id.

A ruleset compiles only when no pass reported anything; ``RulesetError`` carries the whole
list so a user sees every problem of a file at once, like a compiler.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Diagnostic:
    file: str
    line: int          # 1-based; 0 when the error is about the whole file
    col: int           # 1-based
    rule_id: str       # "" when the error is not inside a rule
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        rule = f"rule {self.rule_id}: " if self.rule_id else ""
        return f"{where}: {rule}{self.message}"


class RulesetError(ValueError):
    """The ruleset was refused; ``diagnostics`` lists every error found (sorted)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(diagnostics)
        n = len(self.diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics)
                         + f"\n{n} error{'s' if n != 1 else ''}; ruleset refused")


class Sink:
    """Collects diagnostics for one rule or file: ``sink.error(line, col, msg)``."""

    def __init__(self, file: str, rule_id: str = "", out: list[Diagnostic] | None = None):
        self.file = file
        self.rule_id = rule_id
        self.out = out if out is not None else []

    def error(self, line: int, col: int, message: str) -> None:
        self.out.append(Diagnostic(self.file, line, col, self.rule_id, message))

    def for_rule(self, rule_id: str) -> "Sink":
        return Sink(self.file, rule_id, self.out)
