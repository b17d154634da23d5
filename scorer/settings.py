"""Typed `score` and `serve` sections of the relstream configuration, and where things are.

    score:                       # relstream score (Kafka path)
      group_id: relstream-scorer
      transactional_id: relstream-scorer-0   # unique per running instance
      max_batch: 256
      append_scored: false       # also append each scored fact to its windows
    serve:                       # relstream serve (HTTP path)
      port: 8080
      batch_window_ms: 1.0
      window_deadline_ms: 20
      timestamps:                # plausibility window around the server clock (422 outside)
        max_past_days: 10958
        max_future_hours: 24

Triton is reached over gRPC at ``triton_grpc_url`` when set; otherwise the app derives the
address from the configuration (``relstream.config.triton_grpc_url``).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.dead_letter import DEFAULT_MAX_PAYLOAD_BYTES
from schemas.plan import NS_PER
from schemas.values import TimestampWindow


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecommendSettings(_Section):
    """``serve.recommend`` / ``score.recommend`` (ranking plans only)."""

    catalog: str | None = None  # catalog.parquet; default: the served model version's
    default_k: int = Field(default=10, ge=1)  # HTTP: k when the request has none
    max_session_events: int = Field(default=100, ge=0)  # HTTP: per request
    max_batch: int = Field(default=32, ge=1)  # HTTP: requests per Triton call (<= the model's max_batch_size)
    session_column: str = "basket_id"  # window column whose newest value names the open basket
    # Kafka path: each session event ranks the catalog top-N for its household
    catalog_top_n: int = Field(default=100, ge=1)
    top_k: int = Field(default=20, ge=1)
    exclude_session_items: bool = True
    topic: str = "relstream.recommendations"


class ScoreSettings(_Section):
    plan: str | None = None  # plan YAML path or built-in name; default: the top-level `plan`
    group_id: str = "relstream-scorer"
    transactional_id: str = "relstream-scorer-0"
    facts_topics: list[str] | None = None  # default: [topics.facts]
    scores_topic: str | None = None  # default: topics.scores
    dlq_topic: str | None = None  # default: topics.dlq
    max_batch: int = Field(default=256, ge=1, le=4096)
    # larger records are dead-lettered as oversize; keep it equal to ingest.max_payload_bytes when
    # both services consume the same topic (relstream ingest refuses to start otherwise)
    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD_BYTES, gt=0)
    # how long the loop waits for input when there is none (then it settles commits, checks health)
    poll_timeout_ms: float = Field(default=20.0, ge=0)
    # a batch starts at most every this many ms: fewer, larger batches (a Triton call and a
    # transaction each: broker CPU) vs latency; after an idle spell the first event goes at once
    batch_interval_ms: float = Field(default=20.0, ge=0)
    # 0: a transaction per batch, committed on a worker thread while the next batch is scored
    # (group commit). > 0: one transaction spans the batches of this many ms (fewer transactions,
    # less broker CPU per event, up to this much more latency)
    commit_interval_ms: float = Field(default=0.0, ge=0)
    # adaptive commit cadence: a transaction stays open commit_interval_ms when the input is
    # quiet, rising linearly with the arrival rate to commit_interval_max_ms at commit_busy_rate
    # events/s and above (more events per transaction when busy, a quick commit when idle);
    # null: always commit_interval_ms
    commit_interval_max_ms: float | None = Field(default=50.0, ge=0)
    commit_busy_rate: float = Field(default=2000.0, gt=0)
    # exactly_once: Kafka transactions (read_committed consumers see each score once).
    # at_least_once (opt-in): an idempotent producer, offsets committed after the records are
    # acknowledged: less broker CPU and latency; after a crash some events are scored twice
    # (dedupe downstream on the record's event_id)
    delivery: Literal["exactly_once", "at_least_once"] = "exactly_once"
    append_scored: bool = False
    key_column: str | None = None  # fact column keying score records; default first entity
    auto_offset_reset: str = "earliest"
    window_deadline_ms: float = Field(default=200.0, gt=0)  # Redis socket timeout on this path
    window_cooldown_ms: float = Field(default=500.0, ge=0)
    retry_backoff_ms: float = Field(default=100.0, gt=0)
    retry_backoff_max_ms: float = Field(default=2000.0, gt=0)
    triton_grpc_url: str | None = None
    model_name: str | None = None  # default triton.model_name
    model_version: str = ""  # "" = the server's policy (latest)
    triton_timeout_s: float = Field(default=10.0, gt=0)
    registry_dir: str | None = None  # Avro registry; default <run_dir>/registry
    transaction_timeout_ms: int = Field(default=60000, ge=1000)
    static_membership: bool = True  # group.instance.id = transactional_id: a restart rejoins at once
    consumer: dict[str, str | int | float | bool] = Field(default_factory=dict)  # extra librdkafka
    producer: dict[str, str | int | float | bool] = Field(default_factory=dict)
    recommend: RecommendSettings = Field(default_factory=RecommendSettings)  # ranking plans only


class TimestampWindowSettings(_Section):
    """How far from the server clock a request's timestamps may lie (``serve.timestamps``).

    The default past bound (30 years) keeps replays of historical data scoreable while refusing
    what a unit mix-up produces (seconds read as nanoseconds land in January 1970); the future
    bound allows clock skew, not dates typed a year off.
    """

    max_past_days: float = Field(default=10958.0, gt=0, le=100_000)
    max_future_hours: float = Field(default=24.0, ge=0, le=100_000)

    def window(self) -> TimestampWindow:
        return TimestampWindow(max_past_ns=int(self.max_past_days * NS_PER["days"]),
                               max_future_ns=int(self.max_future_hours * NS_PER["hours"]))


class ServeSettings(_Section):
    plan: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    token_env: str = "RELSTREAM_API_TOKEN"
    auth: bool = True  # false only for local experiments: every request is accepted
    max_body_bytes: int = Field(default=64 * 1024, ge=256)
    batch_window_ms: float = Field(default=1.0, ge=0)
    batch_interval_ms: float = Field(default=10.0, ge=0)  # min time between batches (scorer/batcher.py)
    max_batch: int = Field(default=64, ge=1, le=4096)
    max_in_flight: int = Field(default=2, ge=1)
    window_deadline_ms: float = Field(default=20.0, gt=0)
    window_cooldown_ms: float = Field(default=500.0, ge=0)
    window_threads: int = Field(default=4, ge=1)
    triton_grpc_url: str | None = None
    model_name: str | None = None
    model_version: str = ""
    triton_timeout_s: float = Field(default=2.0, gt=0)
    workers: int = Field(default=1, ge=1)
    key_column: str | None = None
    timestamps: TimestampWindowSettings = Field(default_factory=TimestampWindowSettings)
    recommend: RecommendSettings = Field(default_factory=RecommendSettings)  # ranking plans only
