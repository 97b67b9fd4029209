"""bench.perf_threads' reading of perf's samples (the perf and gdb runs themselves need root
and a loaded engine: `python -m bench.perf_threads`, docs/BENCH.md)."""
from bench.perf_threads import _GDB, anonymous, parse_script, summarize

SCRIPT = """\
    7f1a2b3c4d5e [unknown] ([unknown])
    7f1a2b3c4d60 [unknown] (//anon)
    5599aa00bb11 _PyEval_EvalFrameDefault (/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0)
    ffffffff81000000 finish_task_switch.isra.0 ([kernel.kallsyms])
    7f0000001234 [unknown] (/venv/lib/python3.11/site-packages/pyzmq.libs/libzmq-2f02442c.so.5.2.5)
not a sample line
"""


def test_samples_are_read_and_jit_ones_named():
    rows = parse_script(SCRIPT)
    assert [r[2] for r in rows] == ["[unknown]", "anon", "libpython3.11.so.1.0", "[kernel.kallsyms]",
                                    "libzmq-2f02442c.so.5.2.5"]
    jit = [ip for ip, s, d in rows if anonymous(s, d)]
    assert jit == [0x7f1a2b3c4d5e, 0x7f1a2b3c4d60]           # libzmq's unnamed code is not JIT
    text = summarize(rows, {jit[0]: "JIT f", jit[1]: "JIT f"}, top=3)
    assert text.splitlines()[0].split() == ["40.0%", "JIT", "f"]
    assert "by library: JIT (Numba) 40.0%" in text


def test_gdb_answers_are_cut_to_the_function_name():
    ln = ("ingress::_dedup_kernels::insert[abi:v1][abi:c8tJTC](Array<long long, 1, C, mutable, aligned>, "
          "long long) + 1234 in section .text")
    assert _GDB.match(ln).group(1) == "ingress::_dedup_kernels::insert"
    assert _GDB.match("NRT_decref + 12 in section .text").group(1) == "NRT_decref"
