"""The wiring: every service built from `Settings`, once per process (pages, CLI, benchmarks).

from parley.wiring import Services, build_services
"""

from parley.wiring.factories import build_recall_index
from parley.wiring.services import Services, build_services

__all__ = ["Services", "build_recall_index", "build_services"]
