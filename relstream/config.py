"""relstream configuration: one YAML file plus environment overrides, typed and strict.

Layers, lowest priority first:

1. built-in defaults (the addresses match docker-compose.yml);
2. the addresses of a running local stack (``<run_dir>/stack.json``, written by
   ``relstream stack up``), so other commands find it without extra settings;
3. the YAML file: ``--config PATH``, else ``$RELSTREAM_CONFIG``, else ``./relstream.yaml``
   if it exists;
4. environment variables ``RELSTREAM__SECTION__KEY=value`` (double underscores separate the
   levels; values are read as YAML scalars, so ``true``/``5``/``[a, b]`` work). Under
   ``kafka.client`` single underscores become dots:
   ``RELSTREAM__KAFKA__CLIENT__SECURITY_PROTOCOL=SASL_SSL`` -> ``security.protocol``;
5. secrets, from the environment only: ``RELSTREAM_KAFKA_SASL_USERNAME``,
   ``RELSTREAM_KAFKA_SASL_PASSWORD``, ``RELSTREAM_KAFKA_SSL_KEY_PASSWORD`` (into
   ``kafka.client``) and ``RELSTREAM_REDIS_PASSWORD``. The YAML file may not contain them.

Unknown keys and values of the wrong type are rejected with the dotted key name.

Why the environment layer is our own ~60 lines and not pydantic-settings: the models are plain
pydantic (typed, strict, one per section), but three of the four rules above are ones
pydantic-settings does not have and would need custom sources for: values read as YAML scalars
(it reads complex values as JSON only), single underscores turned into librdkafka's dots under
``kafka.client``, and the local-stack layer, whose location (``run_dir``) comes from the layers
above it. The file-secret check applies to the raw file, before any merge, either way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, TypeVar
from urllib.parse import urlparse

import redis
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from redis.cluster import RedisCluster

from schemas.plan import ServingPlan
from schemas.plan_loading import resolve_plan
from scorer.settings import ScoreSettings, ServeSettings
from streams.settings import IngestSection

from .stack import ComponentSettings, LocalStack

DEFAULT_CONFIG_FILE = "relstream.yaml"
ENV_CONFIG_FILE = "RELSTREAM_CONFIG"
ENV_PREFIX = "RELSTREAM__"

# secret environment variable -> where it goes
KAFKA_SECRET_ENV = {
    "RELSTREAM_KAFKA_SASL_USERNAME": "sasl.username",
    "RELSTREAM_KAFKA_SASL_PASSWORD": "sasl.password",
    "RELSTREAM_KAFKA_SSL_KEY_PASSWORD": "ssl.key.password",
}
REDIS_PASSWORD_ENV = "RELSTREAM_REDIS_PASSWORD"
SECRET_CLIENT_KEYS = set(KAFKA_SECRET_ENV.values()) | {"sasl.oauthbearer.client.secret"}

# Defaults shared with docker-compose.yml (a test checks they agree).
DEFAULT_KAFKA_PORT = 9092
DEFAULT_REDIS_PORT = 6379
DEFAULT_TRITON_HTTP_PORT = 8000
DEFAULT_TRITON_GRPC_PORT = 8001
DEFAULT_TRITON_METRICS_PORT = 8002


class ConfigError(ValueError):
    """Invalid configuration; the message names the dotted key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


LooseScalar = str | int | float | bool


class KafkaConfig(_Strict):
    bootstrap_servers: str = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
    # passed verbatim to librdkafka (security.protocol, sasl.*, ssl.*, linger.ms, ...)
    client: dict[str, LooseScalar] = Field(default_factory=dict)

    @field_validator("client")
    @classmethod
    def _no_bootstrap_in_client(cls, value: dict) -> dict:
        if "bootstrap.servers" in value:
            raise ValueError("set kafka.bootstrap_servers instead of client['bootstrap.servers']")
        return value


class RedisConfig(_Strict):
    url: str = f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"
    password: SecretStr | None = Field(default=None, strict=False)
    # extra keyword arguments for redis.Redis.from_url (ssl_ca_certs, ssl_cert_reqs, ...)
    options: dict[str, LooseScalar] = Field(default_factory=dict)
    socket_timeout_s: float = Field(default=5.0, strict=False)
    cluster: bool = False  # url names one node of a Redis Cluster (redis.cluster.RedisCluster)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if urlparse(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"expected redis://, rediss:// or unix:// URL, got {value!r}")
        return value


class TritonConfig(_Strict):
    url: str = f"http://127.0.0.1:{DEFAULT_TRITON_HTTP_PORT}"
    model_name: str = "relstream"
    timeout_s: float = Field(default=10.0, strict=False)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if urlparse(value).scheme not in ("http", "https", "grpc", "grpcs"):
            raise ValueError(f"expected http(s):// or grpc(s):// URL, got {value!r}")
        return value

    @property
    def protocol(self) -> str:
        """'http' or 'grpc'."""
        return "grpc" if urlparse(self.url).scheme.startswith("grpc") else "http"

    @property
    def ssl(self) -> bool:
        return urlparse(self.url).scheme in ("https", "grpcs")

    @property
    def host_port(self) -> str:
        """host:port as tritonclient expects it (no scheme)."""
        return urlparse(self.url).netloc


class StackPortsConfig(_Strict):
    """Local stack ports; 0 picks a free port (remembered in <run_dir>/stack.json)."""

    kafka: int = 0
    kafka_controller: int = 0
    redis: int = 0
    triton_http: int = 0
    triton_grpc: int = 0
    triton_metrics: int = 0


class StackConfig(_Strict):
    components: list[str] = Field(default_factory=lambda: ["kafka", "redis", "triton"])
    ports: StackPortsConfig = Field(default_factory=StackPortsConfig)
    model_repository: Path | None = Field(default=None, strict=False)  # default <run_dir>/models
    kafka_version: str = ""  # empty: relstream.stack.kafka_jars.KAFKA_VERSION
    kafka_heap: str = "512m"
    kafka_broker_config: dict[str, LooseScalar] = Field(default_factory=dict)
    redis_persistence: bool = True  # AOF (everysec): windows survive a restart; see docs/operations.md
    ready_timeout_s: float = Field(default=120.0, strict=False)

    @field_validator("components")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        bad = sorted(set(value) - {"kafka", "redis", "triton"})
        if bad:
            raise ValueError(f"unknown component(s) {bad}; choose from kafka, redis, triton")
        return value

    @field_validator("kafka_heap")
    @classmethod
    def _heap(cls, value: str) -> str:
        if not (value[:-1].isdigit() and value[-1].lower() in "kmg"):
            raise ValueError(f"expected a JVM size like 512m or 1g, got {value!r}")
        return value


class TopicsConfig(_Strict):
    facts: str = "relstream.facts"
    interactions: list[str] = Field(default_factory=lambda: ["relstream.interactions"])
    labels: str = "relstream.labels"  # label events of plans with label_feedback
    scores: str = "relstream.scores"
    dlq: str = "relstream.dlq"


class Config(_Strict):
    run_dir: Path = Field(default=Path(".relstream"), strict=False)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    triton: TritonConfig = Field(default_factory=TritonConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    plan: Path | None = Field(default=None, strict=False)  # serving-plan YAML
    # the services' sections, kept as written (``section()`` reads them typed); validate() checks
    # each against its service's model (SECTION_MODELS), so a bad value is refused at load time
    ingest: dict[str, Any] = Field(default_factory=dict)
    score: dict[str, Any] = Field(default_factory=dict)
    serve: dict[str, Any] = Field(default_factory=dict)
    # where the values came from (file path or None); informational
    source: str | None = None

    @property
    def model_repository(self) -> Path:
        return self.stack.model_repository or self.run_dir / "models"


# ---------------------------------------------------------------------------------- loading
def config_from_args(args: Any) -> Config:
    """The configuration of a command: its ``--config`` if given (see :func:`load_config`)."""
    return load_config(getattr(args, "config", None))


def load_config(path: str | os.PathLike | None = None,
                env: Mapping[str, str] | None = None,
                use_local_stack: bool = True) -> Config:
    """Load and validate the configuration (see module docstring for the layers)."""
    env = os.environ if env is None else env
    file_path = _config_path(path, env)
    file_layer: dict = {}
    if file_path is not None:
        file_layer = _read_yaml(file_path)
        _reject_file_secrets(file_layer, file_path)
    env_layer = _env_layer(env)

    merged = _deep_merge(file_layer, env_layer)
    if use_local_stack:
        run_dir = Path(merged.get("run_dir", Config.model_fields["run_dir"].default))
        merged = _deep_merge(_local_stack_layer(run_dir), merged)
    _apply_secrets(merged, env)
    if file_path is not None:
        merged["source"] = str(file_path)
    return validate(merged, where=str(file_path) if file_path else "configuration")


# the typed model of each service section (streams: `relstream ingest`; scorer: `score`, `serve`)
SECTION_MODELS: dict[str, type[BaseModel]] = {"ingest": IngestSection, "score": ScoreSettings,
                                              "serve": ServeSettings}


def validate(data: Mapping[str, Any], where: str = "configuration") -> Config:
    """The configuration, every section checked against its model; errors name the dotted keys."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: top level must be a mapping, got {type(data).__name__}")
    try:
        cfg = Config.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"invalid {where}:\n{format_errors(exc)}") from None
    errors = []
    for name, model in SECTION_MODELS.items():
        try:
            model.model_validate(getattr(cfg, name))
        except ValidationError as exc:
            errors.append(format_errors(exc, prefix=name + "."))
    if errors:
        raise ConfigError(f"invalid {where}:\n" + "\n".join(errors))
    return cfg


def format_errors(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        key = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            shown = err.get("input")
            shown = "" if isinstance(shown, (dict, list)) or err["type"] == "value_error" \
                else f" (got {shown!r})"
            lines.append(f"  {key}: {err['msg']}{shown}")
    return "\n".join(lines)


T = TypeVar("T", bound=BaseModel)


def section(cfg: Config, name: str, model: type[T]) -> T:
    """Validate a free section (`ingest`, `score`, `serve`) with a package's own model.

    Errors name the dotted key, e.g. ``ingest.batch_size``.
    """
    raw = getattr(cfg, name)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid {name} section:\n{format_errors(exc, prefix=name + '.')}") from None


def _config_path(path, env) -> Path | None:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        return p
    if env.get(ENV_CONFIG_FILE):
        p = Path(env[ENV_CONFIG_FILE])
        if not p.is_file():
            raise ConfigError(f"config file {p} (from ${ENV_CONFIG_FILE}) not found")
        return p
    p = Path(DEFAULT_CONFIG_FILE)
    return p if p.is_file() else None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _reject_file_secrets(data: dict, path: Path) -> None:
    client = (data.get("kafka") or {}).get("client") or {}
    if isinstance(client, dict):
        for key in SECRET_CLIENT_KEYS & set(client):
            env_name = next((e for e, k in KAFKA_SECRET_ENV.items() if k == key), None)
            hint = f"set ${env_name}" if env_name else "set it via RELSTREAM__KAFKA__CLIENT__..."
            raise ConfigError(f"{path}: kafka.client.{key}: secrets may not be stored in the "
                              f"config file; {hint} instead")
    redis_cfg = data.get("redis") or {}
    if isinstance(redis_cfg, dict):
        if "password" in redis_cfg:
            raise ConfigError(f"{path}: redis.password: secrets may not be stored in the config "
                              f"file; set ${REDIS_PASSWORD_ENV} instead")
        url = redis_cfg.get("url")
        if isinstance(url, str) and urlparse(url).password:
            raise ConfigError(f"{path}: redis.url contains a password; remove it and set "
                              f"${REDIS_PASSWORD_ENV} instead")


def _env_layer(env: Mapping[str, str]) -> dict:
    layer: dict = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if not all(parts):
            raise ConfigError(f"environment variable {name}: empty key segment")
        if parts[:2] == ["kafka", "client"] and len(parts) == 3:
            # librdkafka keys are dotted; env names cannot be. Keep the value a string.
            parts[2] = parts[2].replace("_", ".")
            value: Any = raw
        elif _is_string_field(parts):
            value = raw
        else:
            try:
                value = yaml.safe_load(raw) if raw != "" else ""
            except yaml.YAMLError as exc:
                raise ConfigError(f"environment variable {name}: not a valid value: {exc}") from None
        node = layer
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name}: conflicts with another setting")
        node[parts[-1]] = value
    return layer


def _is_string_field(parts: list[str]) -> bool:
    """True when the dotted path names a str (or Path) field, so env text is kept verbatim."""
    model: Any = Config
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return False
        annotation = fields[part].annotation
        if i == len(parts) - 1:
            return annotation in (str, Path, Path | None, str | None)
        model = annotation
    return False


def _apply_secrets(merged: dict, env: Mapping[str, str]) -> None:
    for env_name, key in KAFKA_SECRET_ENV.items():
        if env.get(env_name):
            merged.setdefault("kafka", {}).setdefault("client", {})[key] = env[env_name]
    if env.get(REDIS_PASSWORD_ENV):
        merged.setdefault("redis", {})["password"] = env[REDIS_PASSWORD_ENV]


def _local_stack_layer(run_dir: Path) -> dict:
    try:
        state = json.loads((run_dir / "stack.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return {}
    frag = state.get("config")
    return frag if isinstance(frag, dict) else {}


def _deep_merge(base: Mapping, over: Mapping) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------- clients
# librdkafka (2.16) re-bootstraps by default when every known broker is down and decommissions
# them; the group-coordinator handles then stay dead, so after a broker restart offset commits,
# group joins and send_offsets_to_transaction hang (confluentinc/librdkafka#5511). "none" keeps the
# known brokers and reconnects to them. Overridable through kafka.client.
KAFKA_CLIENT_DEFAULTS: dict[str, Any] = {"metadata.recovery.strategy": "none"}


def kafka_client_config(cfg: Config, **overrides: Any) -> dict:
    """librdkafka settings for confluent_kafka Producer/Consumer/AdminClient."""
    conf: dict[str, Any] = {"bootstrap.servers": cfg.kafka.bootstrap_servers, **KAFKA_CLIENT_DEFAULTS}
    conf.update(cfg.kafka.client)
    conf.update(overrides)
    return conf


def redis_client(cfg: Config, **overrides: Any):
    """A redis.Redis for cfg.redis (URL may be rediss:// for TLS; password from env)."""
    kwargs: dict[str, Any] = {"socket_timeout": cfg.redis.socket_timeout_s,
                              "socket_connect_timeout": cfg.redis.socket_timeout_s}
    if cfg.redis.password is not None:
        kwargs["password"] = cfg.redis.password.get_secret_value()
    kwargs.update(cfg.redis.options)
    kwargs.update(overrides)
    if cfg.redis.cluster:  # window keys are hash-tagged per entity: every command hits one slot
        return RedisCluster.from_url(cfg.redis.url, **kwargs)
    return redis.Redis.from_url(cfg.redis.url, **kwargs)


def triton_client(cfg: Config):
    """tritonclient InferenceServerClient (HTTP or gRPC, from the URL scheme)."""
    t = cfg.triton
    if t.protocol == "grpc":
        import tritonclient.grpc as grpcclient
        return grpcclient.InferenceServerClient(t.host_port, ssl=t.ssl)
    import tritonclient.http as httpclient
    return httpclient.InferenceServerClient(t.host_port, ssl=t.ssl,
                                            connection_timeout=t.timeout_s,
                                            network_timeout=t.timeout_s)


def stack_from_config(cfg: Config):
    """The LocalStack described by the `stack` section."""
    s = cfg.stack
    settings = ComponentSettings(kafka_version=s.kafka_version, kafka_heap=s.kafka_heap,
                                 kafka_broker_config=dict(s.kafka_broker_config),
                                 redis_persistence=s.redis_persistence)
    return LocalStack(cfg.run_dir, cfg.model_repository, components=s.components,
                      ports=s.ports.model_dump(), settings=settings,
                      ready_timeout=s.ready_timeout_s)


def serving_plan(cfg: Config, override: str | os.PathLike | None = None) -> ServingPlan:
    """The serving plan of a command: ``override`` (``--plan``, ``score.plan`` ...), else the
    top-level ``plan``, else the built-in default (``schemas.plan_loading.resolve_plan``)."""
    return resolve_plan(override or cfg.plan)


def triton_grpc_url(cfg: Config, override: str | None = None) -> str:
    """Where the scorers reach Triton over gRPC (host:port): ``override`` if set, else
    ``triton.url`` when it is a grpc:// URL, else the local stack's gRPC address
    (``<run_dir>/stack.json``), else port 8001 on the host of ``triton.url``."""
    if override:
        return override.split("://", 1)[-1]
    if cfg.triton.protocol == "grpc":
        return cfg.triton.host_port
    try:
        state = json.loads((Path(cfg.run_dir) / "stack.json").read_text())
        addr = state.get("addresses", {}).get("triton_grpc")
        http = state.get("addresses", {}).get("triton_http")
        if addr and http and urlparse(http).netloc == cfg.triton.host_port:
            return addr
    except (OSError, json.JSONDecodeError):
        pass
    host = urlparse(cfg.triton.url).hostname or "127.0.0.1"
    return f"{host}:{DEFAULT_TRITON_GRPC_PORT}"
