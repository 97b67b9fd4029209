"""CI-sized run of the decoder fuzz target (tests/ingress/fuzz_decoder.py): 20,000 inputs."""
from shm.types import ErrorCode
from tests.ingress.fuzz_decoder import run


def test_fuzz_20000_inputs_each_decided_or_refused_with_a_code():
    out = run(20_000, seed=20261128)
    assert sum(out.values()) == 20_000
    # the generator reaches both outcomes and most of the codes (guards against a dead fuzzer)
    assert out["OK"] > 500
    reached = {c.name for c in ErrorCode if out[c.name]}
    assert reached >= {"BAD_FRAME", "FRAME_TOO_LARGE", "BAD_MAGIC", "BAD_VERSION", "BAD_FLAGS",
                       "SCHEMA_MISMATCH", "BAD_COUNT", "BAD_LENGTH", "BAD_JSON", "UNKNOWN_FIELD",
                       "MISSING_FIELD", "BAD_FIELD", "OUT_OF_RANGE", "NON_FINITE"}


def test_live_fuzz_every_message_gets_exactly_one_reply():
    """2,000 fuzz messages over real ZeroMQ (DEALER -> ROUTER), then valid requests still decided."""
    from tests.ingress.decision_server import DecisionServer
    from tests.ingress.fuzz_decoder import run_live
    from tests.ingress.wire_helpers import make_codec

    with DecisionServer(make_codec()) as server:
        out = run_live(server.endpoint, make_codec(), 2_000, seed=5)
    assert sum(out.values()) == 2_000
    assert out["OK"] > 100 and out["BAD_FRAME"] > 10 and out["BAD_JSON"] > 100
