"""The fake server's pure script: rule order, steps with ``times``, layered faults, token counts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mabeam.dev.fakellm.script import Fault, Script, count_tokens, pieces, truncate


def test_steps_run_out_then_the_next_rule_answers() -> None:
    script = Script.from_dict({"rules": [{"model": "m", "fault": {"status": 503}, "times": 2},
                                         {"model": "m", "reply": "ok"}]})
    verdicts = [script.decide("m", "x", False, None) for _ in range(3)]
    assert [v.fault.status if v.fault else 0 for v in verdicts] == [503, 503, 0]
    assert verdicts[2].answer.text == "ok"


def test_header_fault_layers_over_model_fault() -> None:
    script = Script.from_dict({"models": {"m": {"fault": {"latency_ms": 5}}}})
    verdict = script.decide("m", "x", False, Fault.from_header("status=429,retry_after=1"))
    assert verdict.fault == Fault(status=429, retry_after="1", latency_ms=5.0)


def test_match_and_generators() -> None:
    script = Script.from_dict({"rules": [{"match": "^count", "generate": "fixed", "tokens": 3}]})
    assert script.decide("m", "count please", False, None).answer.text == "tok1 tok2 tok3"
    assert script.decide("m", "hi", False, None).answer.text == "echo: hi"
    assert script.decide("m", "hi", True, None).answer.text == '{"echo": "hi"}'


@given(st.text(max_size=200), st.integers(0, 30))
def test_pieces_rejoin_and_truncate_respects_the_limit(text: str, limit: int) -> None:
    assert "".join(pieces(text)) == text
    cut, was_cut = truncate(text, limit)
    assert text.startswith(cut)
    if limit:
        assert count_tokens(cut) <= limit
    assert was_cut == (limit > 0 and count_tokens(text) > limit)
    assert count_tokens(text) <= len(text.encode())
