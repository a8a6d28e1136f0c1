"""A local OpenAI- and Anthropic-compatible model server for tests, the demo and benchmarks (dev tooling).

Real HTTP on loopback, deterministic scripted answers, realistic usage counts,
fault injection, and request counters (see :mod:`mabeam.dev.fakellm.script`
and :mod:`mabeam.dev.fakellm.app`). Run it by hand with ``mabeam fake-llm``;
from code, :class:`mabeam.dev.fakellm.process.FakeLLMProcess` starts it as a
child process and reads the port it bound.
"""
