"""Test doubles that speak real wire protocols, for the tests and the benchmarks alike.

`parley.fakes.anthropic_server.FakeAnthropic` is a standard-library HTTP server that speaks the
Messages API (JSON and SSE), so the real Anthropic SDK parses real bytes. It imports
nothing from Parley, so any layer's tests and every benchmark may use it.
"""
