"""A local OpenID Connect provider for tests: `oidc-provider-mock` on 127.0.0.1, with
the users and claims a test gives it (its sign-in form lists them as buttons)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import free_port, stop

MOCK = str(Path(sys.executable).with_name("oidc-provider-mock"))


@dataclass(frozen=True)
class Provider:
    url: str

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"


@contextlib.contextmanager
def oidc_provider(users: Sequence[Mapping[str, Any]], log_path: Path) -> Iterator[Provider]:
    """The provider, up and answering its discovery document; stopped afterwards."""
    port = free_port()
    command = [MOCK, "-H", "127.0.0.1", "-p", str(port)]
    for claims in users:
        command += ["--user-claims", json.dumps(dict(claims))]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        provider = Provider(f"http://127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with opener.open(provider.metadata_url, timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError(log_path.read_text()) from None
                    time.sleep(0.2)
            yield provider
        finally:
            stop(server)
