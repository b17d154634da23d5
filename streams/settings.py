"""The ``ingest`` section of the relstream configuration (typed; validated by `relstream config check`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.dead_letter import DEFAULT_MAX_PAYLOAD_BYTES

LooseScalar = str | int | float | bool


class BackfillSource(BaseModel):
    """History that is not in Kafka: a file of one plan table (see ``relstream ingest --backfill``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    table: str | None = None  # default: the plan's fact table


class IngestSection(BaseModel):
    """The ``ingest`` section of the relstream config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topics: dict[str, str] = Field(default_factory=dict)  # topic -> plan table
    group_id: str = "relstream-ingest"
    batch_size: int = Field(default=5000, gt=0)
    batch_timeout_s: float = Field(default=0.1, gt=0)
    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD_BYTES, gt=0)
    # Who dead-letters the bad records of a topic `relstream score` also consumes (score.facts_topics,
    # default topics.facts): "owned" (default) = the scorer; ingest skips them and counts them in
    # relstream_ingest_dlq_skipped_total, so each bad record has one dead letter. "all" = ingest
    # dead-letters every bad record it reads (for deployments without `relstream score`).
    dead_letters: Literal["owned", "all"] = "owned"
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # how often the window store's completeness marker is read (a lost store is rebuilt from Kafka)
    state_check_interval_s: float = Field(default=1.0, gt=0)
    # files backfilled into the windows (history older than the topics hold): reloaded when the
    # store is rebuilt, so a rebuilt store holds them again before it reads as complete
    backfill_sources: list[BackfillSource] = Field(default_factory=list)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_addr: str = "127.0.0.1"  # 0.0.0.0 to let a Prometheus on another host scrape
    registry: Path | None = None  # file schema registry; default <run_dir>/schema-registry
    store: dict[str, Any] = Field(default_factory=dict)  # extra RedisWindowStore keyword arguments
    consumer: dict[str, LooseScalar] = Field(default_factory=dict)  # librdkafka, consumer only
    producer: dict[str, LooseScalar] = Field(default_factory=dict)  # librdkafka, DLQ producer only
