"""Settings: environment variables prefixed ``RECEIVER_``; command-line flags override them."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from . import netaddr


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECEIVER_", extra="ignore")

    database_url: str | None = Field(default=None, description="PostgreSQL URL; unset: the embedded server")
    data_dir: Path = Field(default=Path(".receiver"), description="embedded PostgreSQL and journal live here")
    embedded_shared_buffers: str | None = Field(
        default=None, pattern=r"^[1-9][0-9]*(kB|MB|GB|TB)$",
        description="the embedded PostgreSQL's shared_buffers, taken when it starts (unset: a quarter"
        " of the memory, 128MB to 2GB)",
    )  # fmt: skip
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1)
    public_url: str | None = Field(default=None, description="base of the callback URLs printed for the console")

    journal_dir: Path | None = Field(default=None, description="default: DATA_DIR/journal")
    journal_max_bytes: int = Field(default=256 << 20, description="per worker: backlog bound before 503s")
    journal_segment_bytes: int = 8 << 20
    journal_sync: Literal["process", "thread", "loop", "auto"] = Field(
        default="process",
        description="where a worker fdatasyncs its journal: process (the event loop writes, a syncer"
        " process of the worker syncs), thread, loop, or auto (on the event loop for a lone record,"
        " on a thread for a group)",
    )
    journal_group_window_seconds: float = Field(
        default=0.002, ge=0, le=0.05,
        description="while callbacks come faster than one per this time, a record waits up to this long"
        " for others to share its fdatasync (0: never waits)",
    )  # fmt: skip
    journal_preallocate: bool = Field(
        default=True,
        description="zero-fill each journal segment before its records, so an fdatasync writes only"
        " them (off on copy-on-write filesystems: btrfs, ZFS)",
    )
    writer_batch_size: int = 1000
    writer_interval_seconds: float = Field(
        default=0.5, ge=0, le=5, description="during bursts, store at most this often (larger batches)"
    )
    writer_busy_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="while the acknowledgements keep the CPUs busy, the writer process stores at most this"
        " share of the time (1: never rests); see receiver/pacing.py",
    )
    shutdown_drain_seconds: float = 10.0
    writer: Literal["process", "inline"] = Field(
        default="inline",
        description="process: the writer is a process of its own (what `receiver serve` runs);"
        " inline: a task in each worker (an ASGI server started by hand, the tests)",
    )
    writer_nice: int = Field(
        default=19, ge=0, le=19,
        description="the writer process's CPU niceness (and its local PostgreSQL backend's): under"
        " saturation acknowledgements come first, the journal absorbs the burst",
    )  # fmt: skip
    writer_sched_idle: bool = Field(
        default=True,
        description="Linux: the writer process (and its local PostgreSQL backend and that server's autovacuum"
        " workers) also run in the SCHED_IDLE class, on CPU time nothing else wants, and their autogroups at"
        " niceness 19",
    )

    max_body_bytes: int = Field(default=256 << 10, ge=1024, le=512 << 10, description="larger bodies get 413")
    client_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300,
        description="a client gets this long for its request's headers, then as long for its body (408),"
        " and for reading our answer; then the connection is closed",
    )  # fmt: skip
    quarantine_max_rows: int = Field(
        default=100_000, ge=0, description="the quarantine table keeps its newest rows; quarantine_counts counts all"
    )
    quarantine_bodies_per_second: float = Field(
        default=10.0, ge=0, description="per worker and kind of refusal: refused bodies kept; the others only counted"
    )
    signature_max_skew_seconds: float = Field(
        default=900.0, gt=0, le=86400, description="signed pushes: how far X-Sdk-Date may be from our clock"
    )
    trusted_proxies: Annotated[tuple[netaddr.IPNetwork, ...], NoDecode] = Field(
        default=(), description="proxies whose X-Forwarded-For is believed (CIDRs); none: the socket peer"
    )
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    # The blacklist (docs/blacklist.md). Keyword lists are comma-separated in the environment.
    optout_keywords: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("T", "TD", "R", "退订"), description="a reply that is one of these, as a whole, unsubscribes"
    )
    resubscribe_keywords: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="a reply that is one of these lifts the sender's unsubscribe"
    )
    blacklist_scope: Literal["all", "channel"] = Field(
        default="all", description="an unsubscribe blocks every channel, or only the channel replied to"
    )
    blacklist_mirror: bool = Field(
        default=True,
        description="POST /v1/blacklist/check answers from a copy in each worker's memory, kept current by"
        " NOTIFY (about 100 bytes per blacklisted number); false: every check asks PostgreSQL",
    )
    default_region: str = Field(default="CN", description="country of numbers written without a country code")
    report_window: timedelta = Field(
        default=timedelta(hours=72),
        gt=timedelta(0),
        description="how long after a send its reports and replies are expected (the platform's 72 h); a reply"
        " matched only by its application or its number answers a send inside this window (seconds, or ISO 8601"
        " such as P3D); a registered send with no final report once it has passed is unreported"
        " (docs/delivery-states.md)",
    )
    stuck_pending_after: timedelta = Field(
        default=timedelta(minutes=10),
        gt=timedelta(0),
        description="a registered send pending longer than this, inside its report window, counts as stuck"
        " (seconds, or ISO 8601 such as PT10M)",
    )
    sweep_interval_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="how often pending sends past their report window are marked"
    )

    @field_validator("embedded_shared_buffers", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("embedded_shared_buffers")
    @classmethod
    def _at_least_postgresqls_minimum(cls, value: str | None) -> str | None:
        units = {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
        if value is not None and int(value[:-2]) * units[value[-2:]] < 128 << 10:
            raise ValueError("PostgreSQL needs at least 128kB")
        return value

    @field_validator("optout_keywords", "resubscribe_keywords", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(word.strip() for word in value.split(",") if word.strip())
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(netaddr.parse_network(v) if isinstance(v, str) else v for v in value)
        return value

    @field_validator("report_window", "stuck_pending_after", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        """A number of seconds as the environment writes it (``259200``), besides ISO 8601 (``P3D``)."""
        if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            return float(value)
        return value

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        return value.strip().upper()

    @property
    def journal_path(self) -> Path:
        return self.journal_dir or self.data_dir / "journal"

    def base_url(self, tls: bool = False) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::", ""} else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if tls else 'http'}://{host}:{self.port}"
