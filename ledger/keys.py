"""Several API keys per provider (team mode): which keys there are, and how a job names its key.

A provider's keys come from ``<KEY SETTING>S`` (``SORA_API_KEYS=sora-aaa@2,sora-bbb@3``: each key
with an optional limit of generations in flight at once) or from a ``keys:`` list in config.yaml
(``- {provider: sora_hk, key: sora-aaa, concurrency: 2, max_spend: 50}``), on top of the one key
of ``<KEY SETTING>`` itself. A job records the key it was created with by its **fingerprint** (the
first 12 hex digits of the key's SHA-256, never the key), and is polled and downloaded with that
key ever after — another machine's run included, as long as it has that key configured.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError
from .money import parse_money
from .redact import mask_key

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyChoice:
    """The keys a write-ahead may record (team mode), best first: (fingerprint, limit of generations
    in flight or None, spend cap in minor units or None); ``price``: what this create costs;
    ``holds``: what a create of a price key awaiting its answer holds against a cap (None: ``price``)."""

    candidates: Sequence[Tuple[str, Optional[int], Optional[int]]]
    price: int = 0
    holds: Optional[Callable[[str], int]] = None

    @property
    def free_choice(self) -> Optional[str]:
        """The one key when nothing needs counting (a single key without limit or cap)."""
        if len(self.candidates) == 1 and self.candidates[0][1] is None and self.candidates[0][2] is None:
            return self.candidates[0][0]
        return None


def fingerprint(secret: str) -> str:
    """What the ledger stores for a key: 12 hex digits of its SHA-256 (never the key)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class ApiKey:
    """One key of one provider, its limit of generations in flight (None: only the run's
    ``--concurrency``) and its optional spend cap (minor units of the provider's currency)."""

    provider: str
    secret: str = field(repr=False)
    limit: Optional[int] = None
    max_spend: Optional[int] = None
    # Where it was given (``SORA_API_KEYS``, ``config.yaml keys``), for messages about it.
    setting: str = field(default="", compare=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.secret)

    @property
    def shown(self) -> str:
        """How messages name it: masked, with its fingerprint."""
        return f"{mask_key(self.secret)} (key {self.fingerprint})"


def parse_key_list(text: Any) -> Tuple[Tuple[str, Optional[int]], ...]:
    """``KEY@LIMIT, KEY, ...`` (``<KEY SETTING>S``): each key, with its limit when one is given."""
    entries: List[Tuple[str, Optional[int]]] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        secret, _, limit = part.rpartition("@") if "@" in part else (part, "", "")
        if not secret or (limit and not limit.isdigit()) or (limit and int(limit) < 1):
            raise ValueError(f"expected KEY or KEY@LIMIT (a whole number of generations at once), got "
                             f"{mask_key(part)!r}")
        entries.append((secret.strip(), int(limit) if limit else None))
    return tuple(entries)


def key_entries(value: Any) -> Any:
    """The ``keys:`` setting as read (a YAML list; checked once the providers' currencies are known)."""
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError("expected a list of {provider, key, concurrency, max_spend} (config.yaml)") from exc
    if not isinstance(value, list):
        raise ValueError("expected a list of {provider, key, concurrency, max_spend} (config.yaml)")
    return value


def keys_from_config(entries: Any, currencies: Mapping[str, str]) -> List[ApiKey]:
    """The ``keys:`` list of config.yaml: ``{provider, key, concurrency?, max_spend?}`` each;
    ``max_spend`` is an amount in the provider's currency (``50``, ``¥50``, ``5000c``)."""
    if not isinstance(entries, list):
        raise ConfigError("config.yaml: keys must be a list of {provider, key, concurrency, max_spend}")
    keys = []
    for position, entry in enumerate(entries, start=1):
        where = f"config.yaml: keys entry {position}"
        if not isinstance(entry, dict) or not entry.get("key") or entry.get("provider") not in currencies:
            raise ConfigError(f"{where}: needs provider (one of {', '.join(currencies)}) and key")
        limit = entry.get("concurrency")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ConfigError(f"{where}: concurrency must be a whole number of at least 1")
        cap = None
        if entry.get("max_spend") is not None:
            try:
                cap, currency = parse_money(str(entry["max_spend"]))
            except ValueError as exc:
                raise ConfigError(f"{where}: max_spend: {exc}") from exc
            if currency not in (None, currencies[entry["provider"]]):
                raise ConfigError(f"{where}: max_spend is in {currency}, the {entry['provider']} provider charges "
                                  f"in {currencies[entry['provider']]}")
        keys.append(ApiKey(entry["provider"], str(entry["key"]).strip(), limit, cap, setting="config.yaml keys"))
    return keys


def merge(keys: Iterable[ApiKey]) -> Dict[str, List[ApiKey]]:
    """Keys by provider, each key once (the first mention of a key wins)."""
    by: Dict[str, List[ApiKey]] = {}
    seen = set()
    for key in keys:
        if (key.provider, key.secret) in seen:
            continue
        seen.add((key.provider, key.secret))
        by.setdefault(key.provider, []).append(key)
    return by


class KeyRing:
    """The keys of this machine, by provider, in the order given: the one of ``<KEY SETTING>``
    first, then ``<KEY SETTING>S``, then config.yaml's ``keys:``. A key refused for good (401, no
    balance) is taken out of rotation here and, through the ledger, for every machine."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by = merge(keys)
        self._out: Dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: "Settings") -> "KeyRing":
        from .client import _setting
        from .providers import REGISTRY
        from .settings import field_of

        keys: List[ApiKey] = []
        for name, registration in REGISTRY.items():
            single = _setting(settings, field_of(registration.key_env))
            if single:
                keys.append(ApiKey(name, str(single), setting=registration.key_env))
            for secret, limit in settings.option(f"{name}_keys") or ():
                keys.append(ApiKey(name, secret, limit, setting=f"{registration.key_env}S"))
        entries = settings.option("keys")
        if entries:
            keys.extend(keys_from_config(entries, {n: r.currency for n, r in REGISTRY.items()}))
        return cls(_limits_of_repeats(keys))

    def all(self) -> List[ApiKey]:
        return [key for keys in self._by.values() for key in keys]

    def configured(self, provider: str) -> bool:
        """Whether ``provider`` was given any key (in rotation or not)."""
        return bool(self._by.get(provider))

    def of(self, provider: str) -> List[ApiKey]:
        """``provider``'s keys still in rotation, in the order given."""
        with self._lock:
            return [k for k in self._by.get(provider, ()) if k.fingerprint not in self._out]

    def secret(self, provider: str, fp: Optional[str]) -> Optional[str]:
        """The key with fingerprint ``fp`` (None: the provider's first key), or None."""
        keys = self._by.get(provider, [])
        if fp is None:
            return keys[0].secret if keys else None
        return next((k.secret for k in keys if k.fingerprint == fp), None)

    def several(self, provider: str) -> bool:
        """Whether ``provider`` has more than one key, or a key with a limit or a cap: then the
        write-ahead chooses and counts."""
        keys = self._by.get(provider, [])
        return len(keys) > 1 or any(k.limit is not None or k.max_spend is not None for k in keys)

    def own(self) -> List[str]:
        """Fingerprints of every key in rotation here."""
        with self._lock:
            return [k.fingerprint for k in self.all() if k.fingerprint not in self._out]

    def retire(self, provider: str, fp: Optional[str], reason: str) -> bool:
        """Take the key out of rotation here; True when ``provider`` still has another key."""
        key = next((k for k in self._by.get(provider, []) if fp is None or k.fingerprint == fp), None)
        if key is None:
            return False
        with self._lock:
            first = key.fingerprint not in self._out
            self._out[key.fingerprint] = reason
        left = self.of(provider)
        if first:
            log.warning("%s key %s taken out of rotation: %s; %s", provider, key.shown, reason,
                        f"{len(left)} other key(s) go on" if left else "no other key is left")
        return bool(left)

    def out_reasons(self) -> Dict[str, str]:
        """The keys out of rotation here (``fingerprint -> reason``)."""
        with self._lock:
            return dict(self._out)

    def retired(self, fps: Mapping[str, str]) -> None:
        """Keys another machine took out of rotation (``fingerprint -> reason``)."""
        with self._lock:
            self._out.update(fps)


def _limits_of_repeats(keys: List[ApiKey]) -> List[ApiKey]:
    """A key given twice (``SORA_API_KEY`` and again with a limit in ``SORA_API_KEYS``) keeps the
    first mention's place and the limit and cap given anywhere."""
    limits: Dict[Tuple[str, str], Tuple[Optional[int], Optional[int]]] = {}
    for key in keys:
        limit, cap = limits.get((key.provider, key.secret), (None, None))
        limits[(key.provider, key.secret)] = (limit if limit is not None else key.limit,
                                              cap if cap is not None else key.max_spend)
    return [ApiKey(k.provider, k.secret, *limits[(k.provider, k.secret)], setting=k.setting) for k in keys]
