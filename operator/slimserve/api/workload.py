"""The contract between the operator and the pods it runs: every SLIMSERVE_* variable, typed once.

A compression pod (`slimserve compress`) reads `CompressorEnv`, a server pod (`slimserve serve`) reads
`ServerEnv`, a batch pod (`slimserve batch`) `BatchEnv`, the operator itself `OperatorEnv`. The builders
write a pod's variables with `to_env()`; the command lines read them with `from_env()` (a flag given on the
command line still wins over its variable). `DEFAULTS` is the one table of what a server does when a setting
is unset: the CRD's batching defaults, the server's configuration and the builders read it.

Light on purpose: the CLI reads it while it builds its parser, so it imports nothing but the standard library.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, ClassVar

PREFIX = "SLIMSERVE_"

# A browser Origin (scheme://host[:port], no path), or * for any: the CRD's corsOrigins and the server agree.
CORS_ORIGIN_PATTERN = r"^(\*|https?://[A-Za-z0-9.\-\[\]:]+)$"


@dataclass(frozen=True)
class Defaults:
    """What a server does with a setting left unset, and where a pod finds its claims."""

    host: str = "0.0.0.0"
    http_port: int = 8080  # REST, /metrics and the health endpoints
    grpc_port: int = 9000
    batching: bool = True
    max_batch_size: int = 32
    max_latency_ms: float = 5.0
    max_body_bytes: int = 64 * 1024 * 1024
    header_timeout_s: float = 10.0  # longest wait for a request's headers (gRPC: for a connection's HTTP/2 start)
    body_timeout_s: float = 60.0  # longest wait for a body after its headers (gRPC: for the request message)
    drain_timeout_s: float = 20.0  # longest wait for in-flight requests after SIGTERM
    shutdown_delay_s: float = 0.0  # keep serving (reporting not ready) this long after SIGTERM
    torch_threads: int = 0  # 0: follow the container's CPU limit
    log_level: str = "INFO"
    log_format: str = "text"
    access_log: bool = True  # one JSON line per request on stdout
    payload_log_mode: str = "all"  # with a payload log URL: all, request or response
    payload_log_sample_rate: float = 1.0  # of the requests whose payloads are logged
    payload_log_timeout_s: float = 5.0  # longest wait for each socket operation with the sink
    tracing_sample_rate: float = 1.0  # of the traces a server starts (a caller's sampled flag is followed)
    tls_client_auth: str = "none"  # with TLS on: whether clients must present a certificate
    grpc_web: bool = False
    playground: bool = False
    cors_origins: tuple[str, ...] = ()  # CORS closed
    auth_mode: str = "none"  # who may call: none, apiKeys (hashed keys) or kubernetes (TokenReview + access review)
    auth_verb: str = "get"  # kubernetes: the verb on the ModelService a caller needs
    auth_review_timeout_s: float = 5.0  # kubernetes: longest wait for each call to the API server
    pvc_root: str = "/mnt/pvc"  # where a pod finds the claim of pvc://CLAIM/path
    device: str = "auto"  # where models run: auto (a GPU when the process sees one), cpu, cuda or cuda:N
    cuda_graphs: bool = False  # replay recorded CUDA graphs per batch size (CUDA only)
    grpc_http2: str = "auto"  # the gRPC port's HTTP/2: auto (libnghttp2 where installed, else h2), nghttp2 or h2
    allow_outside_budget: bool = False  # load an artifact whose manifest says withinBudget: false
    kv_cache_bytes: int = 0  # decoders: the KV cache's memory bound (0: max_sequences full-context sequences)
    max_sequences: int = 32  # decoders: most sequences generated at once (KV cache slots)
    max_waiting: int = 64  # decoders: most generation requests waiting for a slot (more: 429)
    queue_timeout_s: float = 30.0  # decoders: longest wait for a slot (then 503)
    context_length: int = 0  # decoders: tokens a sequence may hold, prompt and output (0: the model's context)
    max_tokens: int = 0  # decoders: most tokens a request may generate (0: the rest of the context)


DEFAULTS = Defaults()


class EnvError(ValueError):
    """A variable holds a value its reader cannot take; the message starts with the variable's name."""

    def __init__(self, variable: str, problem: str):
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


# ---- one way to read and write each kind of value ------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, 1/0, yes/no, on/off)")


def format_bool(value: bool) -> str:
    return "true" if value else "false"


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return port


def format_number(value: float) -> str:
    """`5`, `2.5`, `20` (as a pod's template has always spelled them), and exact for any other float."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def parse_origins(value: str | Iterable[str]) -> tuple[str, ...]:
    """Origins from a comma-separated string or a list of them, in order, each once; ValueError naming the entry."""
    items = value.split(",") if isinstance(value, str) else [part for entry in value for part in entry.split(",")]
    origins: list[str] = []
    for raw in items:
        origin = raw.strip()
        if not origin:
            continue
        if not re.match(CORS_ORIGIN_PATTERN, origin):
            hint = " (an origin has no path: drop the trailing '/')" if origin.endswith("/") else ""
            raise ValueError(f"{origin!r} is not an origin such as https://app.example.com or *{hint}")
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


# TLS: a kubernetes.io/tls Secret's keys (cert-manager adds the issuing CA as ca.crt), mounted as files of one
# directory. The operator checks the Secret has them; the server reads them from that directory.
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"
TLS_CA_FILE = "ca.crt"  # verifies client certificates (clientAuth optional or require)
# Whether clients must present a certificate: none, optional (verified when presented) or require.
TLS_CLIENT_AUTH_MODES = ("none", "optional", "require")


def one_of(what: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    """A parser of a lower-case name among `choices` (any case is read); its error names `what` and them."""
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"{what} {text!r} is not one of {', '.join(choices)}")
        return value

    return parse


parse_client_auth = one_of("client auth", TLS_CLIENT_AUTH_MODES)


# Who may call a server: nobody is asked (none), hashed API keys from a Secret, or Kubernetes tokens and RBAC.
AUTH_NONE, AUTH_API_KEYS, AUTH_KUBERNETES = "none", "apiKeys", "kubernetes"
AUTH_MODES = (AUTH_NONE, AUTH_API_KEYS, AUTH_KUBERNETES)


def parse_auth_mode(text: str) -> str:
    """An auth mode as the CRD spells it (none, apiKeys, kubernetes; any case)."""
    by_lower = {mode.lower(): mode for mode in AUTH_MODES}
    mode = by_lower.get(text.strip().lower())
    if mode is None:
        raise ValueError(f"auth mode {text!r} is not one of {', '.join(AUTH_MODES)}")
    return mode


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


PAYLOAD_LOG_MODES = ("all", "request", "response")  # what a payload log sends
parse_payload_log_mode = one_of("payload log mode", PAYLOAD_LOG_MODES)
LOG_FORMATS = ("text", "json")
parse_log_format = one_of("log format", LOG_FORMATS)


DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"


# The gRPC port's HTTP/2 implementations (slimserve.serving.http2).
GRPC_HTTP2_BACKENDS = ("auto", "nghttp2", "h2")
parse_grpc_http2 = one_of("gRPC HTTP/2 backend", GRPC_HTTP2_BACKENDS)


def parse_device(text: str) -> str:
    """A device name as the policy takes it: auto, cpu, cuda or cuda:N (any case, spaces trimmed)."""
    value = text.strip().lower()
    if not re.match(DEVICE_PATTERN, value):
        raise ValueError(f"device {text!r} is not one of auto, cpu, cuda, cuda:N")
    return value


def parse_generation(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"expected a generation number, got {text!r}")
    return int(text)


def parse_count(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"expected a whole number, got {text!r}")
    return int(text)


def parse_flag(_text: str) -> bool:
    return True  # any value turns it on (SLIMSERVE_DEBUG=1)


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, how its text is read and written, and what an empty value means."""

    name: str
    parse: Callable[[str], Any] = str
    format: Callable[[Any], str] = str
    empty_is_value: bool = False  # "" is a value (no CORS origins), not "unset"

    def read(self, environ: Mapping[str, str] = os.environ) -> Any:
        """The value, None when unset (absent or empty); EnvError naming the variable when it cannot be read."""
        text = environ.get(self.name)
        if text is None or (text == "" and not self.empty_is_value):
            return None
        try:
            return self.parse(text)
        except ValueError as error:
            raise EnvError(self.name, str(error)) from None

    def entry(self, value: Any) -> dict[str, str]:
        return {"name": self.name, "value": self.format(value)}

    @contextmanager
    def defaulted(self, value: Any) -> Iterator[None]:
        """Set in this process (and the children it starts) unless already set; as it was again on exit."""
        if self.name in os.environ:
            yield
            return
        os.environ[self.name] = self.format(value)
        try:
            yield
        finally:
            os.environ.pop(self.name, None)


# Variables more than one program reads.
PVC_ROOT = Variable(f"{PREFIX}PVC_ROOT")
CACHE = Variable(f"{PREFIX}CACHE")
# Where http(s):// and hf:// downloads are kept; a shared volume lets replicas download each artifact once.
DOWNLOAD_CACHE = Variable(f"{PREFIX}DOWNLOAD_CACHE")
# The Hugging Face Hub, or a mirror speaking its API, that hf:// sources are read from (huggingface_hub's own name).
HUB_ENDPOINT = Variable("HF_ENDPOINT")
HOME = Variable("HOME")  # the root file system is read-only: what writes under $HOME gets a scratch folder
LOG_LEVEL = Variable(f"{PREFIX}LOG_LEVEL")
LOG_FORMAT = Variable(f"{PREFIX}LOG_FORMAT", parse_log_format)  # text or JSON lines
DEBUG = Variable(f"{PREFIX}DEBUG", parse_flag, lambda on: "1" if on else "")  # empty: unset, off
DEVICE = Variable(f"{PREFIX}DEVICE", parse_device)  # the operator writes cuda on GPU pools, cpu on the others
ARTIFACT_DIGEST = Variable(f"{PREFIX}ARTIFACT_DIGEST")  # "sha256:...": refuse any other artifact
STATUS_TARGET = Variable(f"{PREFIX}STATUS_TARGET")  # NAMESPACE/NAME of the resource whose status a pod patches
JOB_GENERATION = Variable(f"{PREFIX}JOB_GENERATION", parse_generation)  # a status of an older one is ignored
# Where a failing command writes its one line (else /dev/termination-log, where Kubernetes reads it)
TERMINATION_LOG = Variable(f"{PREFIX}TERMINATION_LOG")


class PodEnv:
    """A program's variables as a typed value: None for a variable that is unset.

    `VARIABLES` maps each field to its variable, in the order the pod's template lists them: a pod template
    is compared as written, so reordering would roll every pod for nothing.
    """

    VARIABLES: ClassVar[Mapping[str, Variable]]

    def to_env(self) -> list[dict[str, str]]:
        """Container `env` entries of the fields that are set."""
        return [
            variable.entry(value)
            for name, variable in self.VARIABLES.items()
            if (value := getattr(self, name)) is not None
        ]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, only: Iterable[str] | None = None):
        """The variables of `environ` (those of `only`, when given); EnvError naming the first one at fault."""
        wanted = cls.VARIABLES if only is None else {name: cls.VARIABLES[name] for name in only}
        return cls(**{name: variable.read(environ) for name, variable in wanted.items()})

    @classmethod
    def variable(cls, name: str) -> Variable:
        return cls.VARIABLES[name]

    def or_default(self, name: str) -> Any:
        """The field's value, else the table's default for it."""
        value = getattr(self, name)
        return getattr(DEFAULTS, name, None) if value is None else value


def _check_fields(cls: type[PodEnv]) -> type[PodEnv]:
    """Every field has its variable and every variable its field: a new setting cannot miss either."""
    names = {field.name for field in fields(cls)}
    if names != set(cls.VARIABLES):
        raise TypeError(f"{cls.__name__}: fields and VARIABLES differ: {sorted(names ^ set(cls.VARIABLES))}")
    return cls


@_check_fields
@dataclass(frozen=True)
class ServerEnv(PodEnv):
    """What `slimserve serve` reads (`slimserve serve --help` lists every variable beside its flag)."""

    artifact: str | None = None  # model URI: file://, pvc://, s3:// artifact or builtin://NAME
    model_name: str | None = None
    model_version: str | None = None  # stable or canary: which of a ModelService's models this pod serves
    host: str | None = None
    http_port: int | None = None
    grpc_port: int | None = None
    batching: bool | None = None
    max_batch_size: int | None = None
    max_latency_ms: float | None = None
    grpc_web: bool | None = None
    playground: bool | None = None
    cors_origins: tuple[str, ...] | None = None
    shutdown_delay_s: float | None = None
    drain_timeout_s: float | None = None
    pvc_root: str | None = None
    cache: str | None = None
    home: str | None = None
    artifact_digest: str | None = None  # "sha256:...": refuse any other artifact
    metrics_port: int | None = None
    max_body_bytes: int | None = None
    header_timeout_s: float | None = None
    body_timeout_s: float | None = None
    torch_threads: int | None = None
    log_level: str | None = None
    log_format: str | None = None
    access_log: bool | None = None
    device: str | None = None
    cuda_graphs: bool | None = None
    grpc_http2: str | None = None
    allow_outside_budget: bool | None = None  # serve an artifact that missed its accuracy budget
    kv_cache_bytes: int | None = None  # decoders: KV cache budget in bytes
    max_sequences: int | None = None
    max_waiting: int | None = None
    queue_timeout_s: float | None = None
    context_length: int | None = None
    max_tokens: int | None = None
    tls_dir: str | None = None  # TLS_CERT_FILE, TLS_KEY_FILE (and TLS_CA_FILE): serve every port over TLS
    tls_client_auth: str | None = None
    probe_port: int | None = None  # plain HTTP: health and /metrics only, for probes when clients need certificates
    auth_mode: str | None = None  # AUTH_MODES
    auth_api_keys_dir: str | None = None  # apiKeys: the mounted Secret, one `sha256:<hex>` file per key
    auth_namespace: str | None = None  # kubernetes: the ModelService a caller needs a right on
    auth_resource_name: str | None = None
    auth_verb: str | None = None
    auth_subresource: str | None = None
    auth_audiences: tuple[str, ...] | None = None  # kubernetes: the audiences a token must be for
    auth_review_timeout_s: float | None = None
    service_name: str | None = None  # the ModelService this server belongs to (payload log events, traces)
    service_namespace: str | None = None
    payload_log_url: str | None = None  # http(s):// sink of the CloudEvents; unset: payload logging off
    payload_log_mode: str | None = None
    payload_log_sample_rate: float | None = None
    payload_log_timeout_s: float | None = None
    tracing_endpoint: str | None = None  # OTLP/gRPC collector; unset: tracing off
    tracing_sample_rate: float | None = None
    download_cache: str | None = None  # the mount of spec.modelCache; unset: the pod's own cache

    VARIABLES: ClassVar[Mapping[str, Variable]] = {
        "artifact": Variable(f"{PREFIX}ARTIFACT"),
        "model_name": Variable(f"{PREFIX}MODEL_NAME"),
        "model_version": Variable(f"{PREFIX}MODEL_VERSION"),
        "host": Variable(f"{PREFIX}HOST"),
        "http_port": Variable(f"{PREFIX}HTTP_PORT", parse_port),
        "grpc_port": Variable(f"{PREFIX}GRPC_PORT", parse_port),
        "batching": Variable(f"{PREFIX}BATCHING", parse_bool, format_bool),
        "max_batch_size": Variable(f"{PREFIX}MAX_BATCH_SIZE", int),
        "max_latency_ms": Variable(f"{PREFIX}MAX_LATENCY_MS", float, format_number),
        "grpc_web": Variable(f"{PREFIX}GRPC_WEB", parse_bool, format_bool),
        "playground": Variable(f"{PREFIX}PLAYGROUND", parse_bool, format_bool),
        "cors_origins": Variable(f"{PREFIX}CORS_ORIGINS", parse_origins, ",".join, empty_is_value=True),
        "shutdown_delay_s": Variable(f"{PREFIX}SHUTDOWN_DELAY_S", float, format_number),
        "drain_timeout_s": Variable(f"{PREFIX}DRAIN_TIMEOUT_S", float, format_number),
        "pvc_root": PVC_ROOT,
        "cache": CACHE,
        "home": HOME,
        "artifact_digest": ARTIFACT_DIGEST,
        "metrics_port": Variable(f"{PREFIX}METRICS_PORT", parse_port),
        "max_body_bytes": Variable(f"{PREFIX}MAX_BODY_BYTES", int),
        "header_timeout_s": Variable(f"{PREFIX}HEADER_TIMEOUT_S", float, format_number),
        "body_timeout_s": Variable(f"{PREFIX}BODY_TIMEOUT_S", float, format_number),
        "torch_threads": Variable(f"{PREFIX}TORCH_THREADS", int),
        "log_level": LOG_LEVEL,
        "log_format": LOG_FORMAT,
        "access_log": Variable(f"{PREFIX}ACCESS_LOG", parse_bool, format_bool),
        "device": DEVICE,
        "cuda_graphs": Variable(f"{PREFIX}CUDA_GRAPHS", parse_bool, format_bool),
        "grpc_http2": Variable(f"{PREFIX}GRPC_HTTP2", parse_grpc_http2),
        "allow_outside_budget": Variable(f"{PREFIX}ALLOW_OUTSIDE_BUDGET", parse_bool, format_bool),
        "kv_cache_bytes": Variable(f"{PREFIX}KV_CACHE_BYTES", int),
        "max_sequences": Variable(f"{PREFIX}MAX_SEQUENCES", int),
        "max_waiting": Variable(f"{PREFIX}MAX_WAITING", int),
        "queue_timeout_s": Variable(f"{PREFIX}QUEUE_TIMEOUT_S", float, format_number),
        "context_length": Variable(f"{PREFIX}CONTEXT_LENGTH", int),
        "max_tokens": Variable(f"{PREFIX}MAX_TOKENS", int),
        "tls_dir": Variable(f"{PREFIX}TLS_DIR"),
        "tls_client_auth": Variable(f"{PREFIX}TLS_CLIENT_AUTH", parse_client_auth),
        "probe_port": Variable(f"{PREFIX}PROBE_PORT", parse_port),
        "auth_mode": Variable(f"{PREFIX}AUTH_MODE", parse_auth_mode),
        "auth_api_keys_dir": Variable(f"{PREFIX}AUTH_API_KEYS_DIR"),
        "auth_namespace": Variable(f"{PREFIX}AUTH_NAMESPACE"),
        "auth_resource_name": Variable(f"{PREFIX}AUTH_RESOURCE_NAME"),
        "auth_verb": Variable(f"{PREFIX}AUTH_VERB"),
        "auth_subresource": Variable(f"{PREFIX}AUTH_SUBRESOURCE"),
        "auth_audiences": Variable(f"{PREFIX}AUTH_AUDIENCES", _comma_list, ",".join),
        "auth_review_timeout_s": Variable(f"{PREFIX}AUTH_REVIEW_TIMEOUT_S", float, format_number),
        "service_name": Variable(f"{PREFIX}SERVICE_NAME"),
        "service_namespace": Variable(f"{PREFIX}SERVICE_NAMESPACE"),
        "payload_log_url": Variable(f"{PREFIX}PAYLOAD_LOG_URL"),
        "payload_log_mode": Variable(f"{PREFIX}PAYLOAD_LOG_MODE", parse_payload_log_mode),
        "payload_log_sample_rate": Variable(f"{PREFIX}PAYLOAD_LOG_SAMPLE_RATE", float, format_number),
        "payload_log_timeout_s": Variable(f"{PREFIX}PAYLOAD_LOG_TIMEOUT_S", float, format_number),
        "tracing_endpoint": Variable(f"{PREFIX}TRACING_ENDPOINT"),
        "tracing_sample_rate": Variable(f"{PREFIX}TRACING_SAMPLE_RATE", float, format_number),
        "download_cache": DOWNLOAD_CACHE,
    }


@_check_fields
@dataclass(frozen=True)
class CompressorEnv(PodEnv):
    """What `slimserve compress` and its status sink read."""

    job_spec: str | None = None  # the CompressionJob's spec, JSON (see `job_spec_text`)
    status_target: str | None = None  # NAMESPACE/NAME of the CompressionJob whose status the pod patches
    job_generation: int | None = None  # the generation the pod runs: a status of an older one is ignored
    pvc_root: str | None = None
    cache: str | None = None
    home: str | None = None
    termination_log: str | None = None  # where the one-line failure goes (default /dev/termination-log)
    debug: bool | None = None  # any value: tracebacks of internal errors
    log_format: str | None = None
    device: str | None = None

    VARIABLES: ClassVar[Mapping[str, Variable]] = {
        "job_spec": Variable(f"{PREFIX}JOB_SPEC"),
        "status_target": STATUS_TARGET,
        "job_generation": JOB_GENERATION,
        "pvc_root": PVC_ROOT,
        "cache": CACHE,
        "home": HOME,
        "termination_log": TERMINATION_LOG,
        "debug": DEBUG,
        "log_format": LOG_FORMAT,
        "device": DEVICE,
    }


@_check_fields
@dataclass(frozen=True)
class BatchEnv(PodEnv):
    """What `slimserve batch` reads in a BatchInference's pod (one index of its Indexed Job)."""

    batch_spec: str | None = None  # the BatchInference's spec, JSON, the model resolved (see `job_spec_text`)
    status_target: str | None = None  # NAMESPACE/NAME of the BatchInference whose shardProgress the pod patches
    job_generation: int | None = None
    shards: int | None = None  # how many shards the input is split into; this pod scores one
    artifact_digest: str | None = None  # set when the model is a CompressionJob's artifact
    pvc_root: str | None = None
    cache: str | None = None
    home: str | None = None
    termination_log: str | None = None  # where the one-line failure goes (default /dev/termination-log)
    log_format: str | None = None
    device: str | None = None  # cuda on a GPU pool, cpu on the others
    shard_index: int | None = None  # set by Kubernetes in each pod of an Indexed Job; the builder leaves it unset

    VARIABLES: ClassVar[Mapping[str, Variable]] = {
        "batch_spec": Variable(f"{PREFIX}BATCH_SPEC"),
        "status_target": STATUS_TARGET,
        "job_generation": JOB_GENERATION,
        "shards": Variable(f"{PREFIX}SHARDS", parse_count),
        "artifact_digest": ARTIFACT_DIGEST,
        "pvc_root": PVC_ROOT,
        "cache": CACHE,
        "home": HOME,
        "termination_log": TERMINATION_LOG,
        "log_format": LOG_FORMAT,
        "device": DEVICE,
        "shard_index": Variable("JOB_COMPLETION_INDEX", parse_count),
    }


def job_spec_text(spec_json: Mapping[str, Any]) -> str:
    """A spec's JSON as the pod receives it: canonical, so the same spec always makes the same pod template."""
    return json.dumps(spec_json, sort_keys=True, separators=(",", ":"))


def _namespaces(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


@_check_fields
@dataclass(frozen=True)
class OperatorEnv(PodEnv):
    """What `slimserve operator` reads (the chart sets these)."""

    config: str | None = None  # the configuration file
    watch_namespaces: tuple[str, ...] | None = None  # comma-separated; unset: the whole cluster
    peering: str | None = None
    log_level: str | None = None
    log_format: str | None = None

    VARIABLES: ClassVar[Mapping[str, Variable]] = {
        "config": Variable(f"{PREFIX}OPERATOR_CONFIG"),
        "watch_namespaces": Variable(f"{PREFIX}WATCH_NAMESPACES", _namespaces, ",".join),
        "peering": Variable(f"{PREFIX}PEERING"),
        "log_level": LOG_LEVEL,
        "log_format": LOG_FORMAT,
    }
