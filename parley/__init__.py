"""Parley: self-hosted chat with Claude.

Packages, bottom to top (docs/ARCHITECTURE.md): `core`, `store` and `retrieval`, `auth`
and `memory`, `chat`, `wiring`, then the entry points `cli`, `app_pages` and `bench`.
`fakes` is a stand-alone fake of the Anthropic Messages API. A memory-strategy plug-in
imports `parley.memory` only (and `parley.memory.testing` in its tests).
"""

__version__ = "0.1.0"
