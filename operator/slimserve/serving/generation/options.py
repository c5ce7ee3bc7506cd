"""How a server of a decoder bounds its generation work (`slimserve serve` flags, SLIMSERVE_* variables)."""

from __future__ import annotations

from dataclasses import dataclass

from slimserve.api.workload import DEFAULTS


@dataclass(frozen=True)
class GenerationOptions:
    kv_cache_bytes: int = DEFAULTS.kv_cache_bytes  # 0: max_sequences sequences of the model's whole context
    max_sequences: int = DEFAULTS.max_sequences  # KV cache slots: sequences in the decode batch at most
    max_waiting: int = DEFAULTS.max_waiting  # requests queued for a slot; one more is refused (429)
    queue_timeout_s: float = DEFAULTS.queue_timeout_s  # a queued request's longest wait (then 503)

    def __post_init__(self) -> None:
        checks = {
            "kv_cache_bytes": self.kv_cache_bytes >= 0,
            "max_sequences": self.max_sequences >= 1,
            "max_waiting": self.max_waiting >= 0,
            "queue_timeout_s": self.queue_timeout_s > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: invalid value {getattr(self, name)!r}")
