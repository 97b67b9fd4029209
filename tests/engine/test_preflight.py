"""A start that cannot succeed leaves nothing behind (issue 25, disk hygiene): a busy ingress
port used to be found by the ingress after the workers had made their journals (16 MiB
segment files left behind under the state directory); a refused ruleset left the empty
state directories."""
from __future__ import annotations

import os
import socket

import pytest

from bench.engine_proc import EngineProcess, shm_entries
from shm.runtime.rundir import run_dir_for


@pytest.mark.parametrize("which", ["ingress", "metrics", "rules"])
def test_a_start_that_cannot_succeed_leaves_nothing_behind(tmp_path, which):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    ov = {"ingress": {"ingress": {"bind": f"tcp://127.0.0.1:{port}"}},
          "metrics": {"metrics": {"bind": f"127.0.0.1:{port}", "enabled": True}},
          "rules": {"rules": {"files": [str(tmp_path / "missing.yaml")]}}}[which]
    eng = EngineProcess(tmp_path, workers=1, overrides=ov)
    try:
        with pytest.raises(RuntimeError, match="exited with 2"):
            eng.start()
        assert not os.path.exists(eng.state_dir), sorted(os.walk(eng.state_dir))
        out = eng.output()
        if which == "rules":        # found after the state dirs were made: they are removed
            assert "ruleset refused" in out, out
        else:                       # found before anything is made
            assert f"{which}.bind" in out and "in use" in out and "nothing was created" in out, out
        assert not run_dir_for(eng.instance).exists()
        assert shm_entries(eng.instance) == []
    finally:
        eng.close()
        busy.close()
