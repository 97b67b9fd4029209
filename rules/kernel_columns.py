"""The column pass of a generated kernel: the rules that read no feature, list or state,
evaluated for a block of events at a time, so LLVM vectorizes their comparisons and
boolean arithmetic.

A stateless rule does not depend on event order. For each block of up to
COLUMN_BLOCK_EVENTS events, at the block's first event, the kernel runs:

- ``_gather(events, lo, hi, cols)``: one strided pass over the records copying each field
  these rules read into its own contiguous row of ``cols`` (struct of arrays);
- per bitmap word, up to two loops over the block (``_col<k>(cols, m)``), each writing
  (first loop of the word) or OR-ing into the word's fired row, and error row if a rule of
  the word can fail: one of the rules whose code is straight-line (rules.codegen.vector_ops
  and no branch: ``fw |= int(cond) << bit``), which vectorizes; one of the other stateless
  rules in their per-event form, whose short-circuit skips a costly operation (float %,
  a division by a field) for most events.

The per-event loop (feature reads, the rules that read them, the decision, the feature
updates, in event order) then starts each event's words from those rows. ``cols`` is one
uint64 array of shape (rows, block) allocated once per kernel call (one allocation cost
about 40 ns here, four separate ones 370 ns); a float row holds the value's bits
(_f64_bits, _bits_f64: array views of other dtypes cost reference counting per call);
each row the per-event loop reads is written for every event of the block first.
Every store is to a contiguous row: a store to ``bits[i, w]`` (stride n_words) kept LLVM
from vectorizing a loop (3.4 against 0.9 ns per event for one rule, measured here).

A batch of fewer than COLUMN_MIN_EVENTS events (a single-event request is the common case)
skips the column pass: its stateless rules run per event in their short-circuit form
(``_single<w>(ev)``, one per word), with no scratch array. Measured here (CPU ns/event,
medians of 5-7 alternating rounds on a loaded 2-core machine, column pass / per event):
102 stateless example rules 833/745 at batch 1, 300/280 at 4, 202/185 at 8, 161/170 at 12;
100 synthetic rules 746/647 at 1, 315/294 at 4, 221/234 at 8, 170/216 at 12.
"""
from __future__ import annotations

from dataclasses import dataclass

COLUMN_BLOCK_EVENTS = 256          # the block's rows stay in L1/L2 (rows x 256 x 8 bytes)
COLUMN_MIN_EVENTS = 8              # smaller batches run per event (the crossover measured above)


@dataclass(frozen=True)
class ColumnLoop:
    """One loop over a block: rule statements (rules.kernel_source) OR-ing bits of word
    ``word`` into ``fw`` and ``ew``: branch-free ones (they vectorize), or the per-event
    form for stateless rules whose costly operation a short-circuit usually skips."""
    word: int
    lines: list
    fields: dict                       # field name -> spec, the fields the lines read
    fails: bool                        # a rule may fail: the loop writes the error word too


class ColumnPass:
    """The column functions of ``loops`` (ColumnLoop), their rows in ``cols`` and the kernel
    statements that run them."""

    def __init__(self, schema, loops):
        self.schema = schema
        self.loops = [lp for lp in loops if lp.lines]
        self.fw_row: dict = {}
        self.ew_row: dict = {}
        for lp in self.loops:
            self.fw_row.setdefault(lp.word, len(self.fw_row))
        for lp in self.loops:
            if lp.fails:
                self.ew_row.setdefault(lp.word, len(self.fw_row) + len(self.ew_row))
        self.field_rows: dict = {}       # local variable -> (row, load format, gathered value, field)
        read: dict = {}
        for lp in self.loops:
            read.update(lp.fields)
        row = len(self.fw_row) + len(self.ew_row)
        for name in sorted(read, key=schema.names.index):
            for var, load, value in self._field_vars(name, read[name]):
                self.field_rows[var] = (row, load, value, name)
                row += 1
        self.rows = row

    def _field_vars(self, name: str, s):
        """(variable, load format, gathered uint64) per row of field ``name``; the variables
        are the ones rules.codegen.field_loads defines, with the same values."""
        if s.kind == "bytes":
            off = self.schema.dtype.fields[name][1]
            return [(f"b_{name}_{j}", "{}", f"_ldb(ev, {off + 8 * j}, {min(8, s.size - 8 * j)})")
                    for j in range((s.size + 7) // 8)]
        if s.kind == "float":
            return [(f"f_{name}", "_bits_f64({})", f"_f64_bits(np.float64(ev.{name}))")]
        if s.kind == "bool":
            return [(f"f_{name}", "({} != 0)", f"np.uint64(ev.{name})")]
        if s.type == "u64":
            return [(f"f_{name}", "{}", f"ev.{name}")]
        return [(f"f_{name}", "np.int64({})", f"np.uint64(np.int64(ev.{name}))")]

    def source(self) -> list[str]:
        """The njit functions ``_gather`` and one ``_col<k>`` per loop."""
        if not self.loops:
            return []
        out = ["@njit(**_OPTS)", "def _gather(events, lo, hi, cols):",
               "    for i in range(lo, hi):", "        ev = events[i]"]
        out += [f"        cols[{row}, i - lo] = {value}" for row, _, value, _ in self.field_rows.values()]
        if not self.field_rows:
            out.append("        pass")
        out.append("")
        first: set = set()
        for k, lp in enumerate(self.loops):
            out += ["", "@njit(**_OPTS)", f"def _col{k}(cols, m):", "    for i in range(m):"]
            out += [f"        {var} = {load.format(f'cols[{row}, i]')}"
                    for var, (row, load, _, name) in self.field_rows.items() if name in lp.fields]
            out += ["        fw = 0", "        ew = 0"] + ["    " + s for s in lp.lines]
            op = "|=" if lp.word in first else "="       # a word's first loop writes its rows
            out.append(f"        cols[{self.fw_row[lp.word]}, i] {op} np.uint64(fw)")
            if lp.word in self.ew_row:
                out.append(f"        cols[{self.ew_row[lp.word]}, i] {op} np.uint64(ew)")
            first.add(lp.word)
            out.append("")
        return out + [""]

    def kernel_lines(self) -> list[str]:
        """Kernel statements before the event loop: the one allocation of ``cols``."""
        if not self.loops:
            return []
        return [f"cols = np.empty(({self.rows}, min(n, {COLUMN_BLOCK_EVENTS})), np.uint64)", "lo = 0"]

    def block_lines(self) -> list[str]:
        """Statements at the top of the event loop: at the first event of each block, the
        block's column pass (``lo``: the block's first event)."""
        if not self.loops:
            return []
        return [f"if i % {COLUMN_BLOCK_EVENTS} == 0:",
                "    lo = i",
                f"    m = min(n - i, {COLUMN_BLOCK_EVENTS})",
                "    _gather(events, i, i + m, cols)"] + [f"    _col{k}(cols, m)" for k in range(len(self.loops))]

    def word_start(self, w: int) -> tuple[str, str]:
        """Initial (fired, error) values of word ``w`` for event ``i``."""
        fw = f"np.int64(cols[{self.fw_row[w]}, i - lo])" if w in self.fw_row else "0"
        ew = f"np.int64(cols[{self.ew_row[w]}, i - lo])" if w in self.ew_row else "0"
        return fw, ew
