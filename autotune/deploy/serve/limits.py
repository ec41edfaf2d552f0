"""The server's limits, in one frozen object (``autotune serve`` options map onto its fields)."""

from __future__ import annotations

from dataclasses import dataclass

from autotune.errors import AutotuneError


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024  # larger bodies: 413, refused on Content-Length first
    body_timeout_s: float = 10.0  # the whole body must arrive within this (else 408)
    header_timeout_s: float = 10.0  # request headers must arrive within this after connect/answer
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this
    max_header_bytes: int = 16 * 1024  # h11's limit on the request line + headers (else 400)
    max_inflight: int = 256  # inference requests admitted at once; beyond: 503 + Retry-After
    max_connections: int = 1024  # open connections (and tasks); beyond: 503 + Retry-After
    backlog: int = 2048  # the listen queue (the kernel caps it at net.core.somaxconn)
    max_depth: int = 32  # JSON nesting accepted before parsing the values
    request_timeout_s: float = 30.0  # the model must answer within this (else 504)
    drain_timeout_s: float = 30.0  # on SIGTERM/stop: how long in-flight requests may take
    retry_after_s: int = 1  # the Retry-After of a 503

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_inflight", "max_connections", "backlog", "max_depth",
                     "max_header_bytes", "keep_alive_s", "retry_after_s"):
            if int(getattr(self, name)) < 1:
                raise AutotuneError(f"serve limit {name} must be at least 1; got {getattr(self, name)}.")
        for name in ("body_timeout_s", "header_timeout_s", "request_timeout_s", "drain_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise AutotuneError(f"serve limit {name} must be a positive number of seconds; "
                                    f"got {getattr(self, name)}.")
