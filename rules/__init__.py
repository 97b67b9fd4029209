"""Rule language and compiler: YAML rules -> checked expressions -> one fused Numba kernel.

    compile_ruleset(files, schema, *, thresholds=(), on_error="skip", cache_dir=None,
                    features=None)   # features: shm.features.featureset.FeatureSet
        -> CompiledRuleset        (raises RulesetError with .diagnostics)

    rs.kernel / rs.entry(events, arrival_ns, out, bits, hits, errors, *rs.feature_arrays)
    rs.apply_updates(events, arrival_ns, actions, *feature_arrays)   # recovery, replay
    rs.feature_args: names of the feature arrays (FeatureSet.arg_names()); () without features

Features, lists, account state and global_halt in rules: rules/features.py; the oracle for
them: rules/feature_model.py.

See docs/RULES.md for the language, the semantics and the limits. Heavy imports (numba)
happen on first use of compile_ruleset so the CLI stays fast.
"""
from __future__ import annotations

import shm  # noqa: F401  (first: it sweeps Numba caches made from older sources, shm/jitcache.py)
from rules.diagnostics import Diagnostic, RulesetError

__all__ = ["compile_ruleset", "CompiledRuleset", "RulesetError", "Diagnostic", "Decision"]


def __getattr__(name):
    if name in ("compile_ruleset", "CompiledRuleset", "Decision"):
        from rules import compiler     # lazy: numba, on first use only (module docstring)
        return getattr(compiler, name)
    raise AttributeError(name)
