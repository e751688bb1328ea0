"""benchmarks/bench_latency.py: how the two models take turns in the cold and warm regimes."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_latency.py"
    spec = importlib.util.spec_from_file_location("bench_latency", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("block", [1, 4])
def test_models_take_turns_call_by_call_or_in_blocks_and_every_call_is_timed(bench, block, monkeypatch):
    calls = []
    clock = iter(range(10_000))  # each reading of the clock one second later
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(clock)))
    out = bench.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, block=block)
    warmup, timed = calls[:6], calls[6:]
    assert warmup == ["a"] * 3 + ["b"] * 3
    assert timed == (["a"] * block + ["b"] * block) * 3  # cold: a b a b ...; warm: a a a a b b b b ...
    assert out == {"a": 1.0, "b": 1.0}  # the median of the timed calls, one clock tick each
