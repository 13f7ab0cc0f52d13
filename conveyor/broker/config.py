"""Broker settings and the limits that protect it from hostile or buggy clients."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from conveyor import limitspec
from conveyor.errors import InvalidJob
from conveyor.limits import (
    FRAME_OVERHEAD,
    MAX_BATCH,
    MAX_ERROR_MESSAGE,
    MAX_FRAME_SIZE,
    MAX_LIST,
    MAX_PAYLOAD,
    MAX_QUEUE_NAME,
    MAX_QUEUED,
    MAX_TRACEBACK,
    MAX_WAITS,
    NAME_PATTERN,
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Safe defaults; every one is configurable."""

    max_frame_size: int = MAX_FRAME_SIZE
    max_payload: int = MAX_PAYLOAD
    max_batch: int = MAX_BATCH
    max_connections: int = 10_000
    max_connections_per_ip: int = 1_000
    handshake_timeout: float = 5.0  # seconds to finish TLS and send HELLO (slowloris)
    idle_timeout: float = 300.0  # seconds without a frame before a connection is dropped
    submits_per_second: float = 0.0  # jobs per second per connection; 0 = unlimited
    max_inflight_requests: int = 256  # per connection: reading pauses above this
    # failed logins per source address (IPv4, or IPv6 /64): after this many bad tokens each
    # further one blocks the source for a delay doubling up to login_delay_max
    # (login_delay_max = 0 turns the throttle off)
    login_free_failures: int = 5
    login_delay_first: float = 0.25
    login_delay_max: float = 4.0
    # queued + scheduled jobs per queue before submits get queue_full; 0 = unlimited
    max_queued: int = MAX_QUEUED
    max_queued_by_queue: tuple[tuple[str, int], ...] = ()  # per-queue overrides

    def announced(self) -> dict[str, int]:
        """The limits a client must honour, as WELCOME ``limits`` announces them."""
        return {
            "max_frame_size": self.max_frame_size,
            "max_payload": self.max_payload,
            "max_batch": self.max_batch,
            "max_inflight_requests": self.max_inflight_requests,
            "max_error_message": MAX_ERROR_MESSAGE,
            "max_traceback": MAX_TRACEBACK,
            "max_waits": MAX_WAITS,
            "max_list": MAX_LIST,
        }

    def __post_init__(self) -> None:
        for name, _ in self.max_queued_by_queue:
            if not re.fullmatch(NAME_PATTERN, name) or len(name) > MAX_QUEUE_NAME:
                raise ValueError(f"max_queued: {name!r} is not a queue name")
        for name, n in (("", self.max_queued), *self.max_queued_by_queue):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                where = f" for queue {name!r}" if name else ""
                raise ValueError(f"max_queued{where} must be an integer >= 0 (0: unlimited)")
        # one job (payload plus its id, names and fields) must always fit in one frame,
        # or it could be accepted and then never dispatched
        if self.max_payload > self.max_frame_size - FRAME_OVERHEAD:
            raise ValueError(
                f"max_payload ({self.max_payload}) must be at most max_frame_size - "
                f"{FRAME_OVERHEAD} ({self.max_frame_size - FRAME_OVERHEAD})"
            )


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 65432
    store_url: str = "memory://"
    home: Path = field(default_factory=lambda: Path(".conveyor"))
    cert_file: Path | None = None  # default: $home/server.pem
    key_file: Path | None = None  # default: $home/server.key
    client_ca_file: Path | None = None  # set: mutual TLS, client certificates required
    tokens_file: Path | None = None  # default: $home/tokens.json
    heartbeat: float = 5.0  # seconds between worker heartbeats
    lease: float = 30.0  # a worker silent this long loses its jobs (each heartbeat renews)
    deadline_grace: float = 10.0  # a run past its timeout by this much is failed by the broker
    retention: float = 7 * 86400.0  # completed/cancelled jobs kept this long
    limits: Limits = field(default_factory=Limits)
    name: str = "conveyor-broker"
    # the HTTP API and dashboard: None = not served (the `conveyor broker` command serves it
    # on 8080 by default); 0 = any free port
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    http_tls: bool = False  # HTTPS with the broker's certificate
    http_insecure: bool = False  # allow plain HTTP on a non-loopback address
    # rate and concurrency limits from the command line (``--rate task:add=100/s``,
    # ``--concurrency key:domain:=2``): (target, value), applied at every start over what
    # the store keeps (conveyor.limitspec checks them)
    rate_limits: tuple[tuple[str, str | int], ...] = ()

    def __post_init__(self) -> None:
        try:
            limitspec.check_table(dict(self.rate_limits))
        except InvalidJob as exc:
            raise ValueError(exc.message) from None
        if (
            self.http_port is not None
            and not self.http_tls
            and not self.http_insecure
            and not _loopback(self.http_host)
        ):
            raise ValueError(
                f"refusing to serve the HTTP API on {self.http_host} without TLS: tokens would "
                "cross the network in the clear; add --http-tls (or --http-insecure if a TLS "
                "proxy in front does it)"
            )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
