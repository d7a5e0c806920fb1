"""The ``Settings`` object, built once per command and passed down.

Precedence, highest first: command-line flag > process environment > ``.env`` in the working
directory > ``config.yaml`` in the working directory > built-in default. Core modules never read
``os.environ``; the CLI hands the environment in here.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit


from .errors import ConfigError

RESOLUTIONS = ("horizontal", "vertical")
QUALITIES = ("normal", "high")
OUTPUT_MODES = ("centralized", "in-place")


def parse_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true/false)")


def _optional_str(text: Any) -> Optional[str]:
    value = str(text).strip()
    return value or None


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def _int_at_least(low: int) -> Callable[[Any], int]:
    def parse(text: Any) -> int:
        value = int(str(text).strip())
        if value < low:
            raise ValueError(f"must be at least {low}, got {value}")
        return value

    return parse


def _positive_float(text: Any) -> float:
    value = float(str(text).strip())
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    return value


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _byte_size(text: Any) -> int:
    """A positive size in bytes: ``4294967296``, ``500MB``, ``4 GiB`` (kB/MB/GB are powers of 1000)."""
    value = str(text).strip()
    number = value.rstrip("BbKkMmGgTtIi ")
    unit = value[len(number):].strip().lower()
    if unit not in _BYTE_UNITS:
        raise ValueError(f"unknown unit {unit!r}; use bytes or B, kB, MB, GB, KiB, MiB, GiB")
    size = int(float(number) * _BYTE_UNITS[unit])
    if size < 1:
        raise ValueError(f"must be at least 1 byte, got {text!r}")
    return size


def _duration(text: Any) -> int:
    # Which durations a model takes is the provider's business, checked once the provider is known.
    value = int(str(text).strip())
    if value < 1:
        raise ValueError(f"must be a positive number of seconds, got {value}")
    return value


_PRICE_ENTRY = re.compile(r"^\s*([A-Za-z0-9._-]+(?:@\d+x\d+)?)\s*[=:]\s*([0-9]+(?:\.[0-9]+)?)\s*$")


def _price_table(text: Any) -> Tuple[Tuple[str, float], ...]:
    """``MODEL=CENTS, MODEL@WIDTHxHEIGHT=CENTS, ...`` (cents per second of video), or a mapping
    of the same from config.yaml."""
    if isinstance(text, Mapping):
        entries = [f"{key}={value}" for key, value in text.items()]
    else:
        entries = [part for part in str(text).split(",") if part.strip()]
    table = []
    for entry in entries:
        match = _PRICE_ENTRY.match(entry)
        if match is None:
            raise ValueError(f"expected MODEL=CENTS or MODEL@WIDTHxHEIGHT=CENTS (cents per second), got {entry.strip()!r}")
        table.append((match.group(1), float(match.group(2))))
    return tuple(table)


@dataclass(frozen=True)
class Option:
    """A setting a provider module declares (``Registration.options``): its name in the
    environment, ``.env`` and ``config.yaml``, its key in ``Settings.extra``, how it is read, its
    default, and whether it is a secret (never printed) or a base URL (checked like SORA_BASE_URL)."""

    env: str
    key: str
    parse: Callable[[Any], Any] = lambda value: str(value).strip()
    default: Any = None
    secret: bool = False
    url_example: Optional[str] = None  # set for a base URL: the example its error message gives


def url_setting(text: Any) -> str:
    """A base URL as written, without the trailing slash."""
    return str(text).strip().rstrip("/")


def secret_setting(text: Any) -> Optional[str]:
    """A key or secret; empty means not set."""
    return _optional_str(text)


def price_setting(text: Any) -> Tuple[Tuple[str, float], ...]:
    """``KEY=AMOUNT, KEY=AMOUNT`` (a provider's price overrides, in its own unit), or a mapping."""
    return _price_table(text)


def provider_options() -> Tuple[Option, ...]:
    """Every setting the registered providers declare."""
    from .providers import OPTIONS  # the providers' modules import this one

    return OPTIONS


def field_of(env: str) -> str:
    """The ``Settings`` field, or a provider option's key, of the setting named ``env``."""
    found = next((name for spec_env, name, _ in SPECS if spec_env == env), None)
    if found is None:
        found = next((o.key for o in provider_options() if o.env == env), None)
    if found is None:
        raise KeyError(env)
    return found


def provider_names() -> Tuple[str, ...]:
    """The providers ledger speaks, the default first."""
    from .providers import REGISTRY

    return tuple(REGISTRY)


def _provider(text: Any) -> str:
    value = str(text).strip().lower()
    if value not in provider_names():
        raise ValueError(f"must be one of {', '.join(provider_names())}, got {text!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Every knob of the tool, resolved. ``sources`` says where each value came from."""

    api_key: Optional[str] = None
    base_url: str = "https://api.sora.hk/v1"
    # Where storyboards that do not name a provider are sent; a job keeps the one it was sent to.
    provider: str = "sora_hk"
    openai_api_key: Optional[str] = None
    openai_base_url: str = "https://api.openai.com/v1"
    # Overrides of the /v1/videos price list: (model or model@size, cents per second).
    openai_prices: Tuple[Tuple[str, float], ...] = ()
    max_concurrent_tasks: int = 8
    gen_count_per_segment: int = 2
    http_proxy: Optional[str] = None
    https_proxy: Optional[str] = None
    no_proxy: Optional[str] = None
    database_url: Optional[str] = None
    busy_timeout: float = 30.0
    input_dir: Path = Path("input")
    output_dir: Path = Path("output")
    output_mode: str = "centralized"
    default_duration: Optional[int] = None  # None: each model's own default
    default_resolution: str = "horizontal"
    default_is_pro: bool = False
    default_remove_watermark: bool = True
    default_quality: str = "normal"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_download_bytes: int = 4 << 30
    download_min_bytes_per_second: int = 1024
    download_speed_time: float = 30.0
    download_timeout: float = 3600.0
    poll_timeout_seconds: float = 45 * 60
    poll_min_interval: float = 0.25
    poll_max_interval: float = 120.0
    poll_max_per_second: float = 10.0
    max_attempts: int = 5
    retry_base_delay: float = 30.0
    retry_max_delay: float = 30 * 60
    reconcile_grace_seconds: float = 30.0
    # How far the API's task timestamps may be off this machine's clock when a lost create's task
    # is looked for; widened by the offset the API's Date header shows (``ApiClient.clock_offset``).
    reconcile_skew_seconds: float = 120.0
    lease_seconds: float = 120.0
    # Team mode on PostgreSQL: how far this machine's clock may be from the database's for
    # ``ledger work`` to start (leases go by the database's clock; the rest still by this one's).
    max_clock_skew_seconds: float = 5.0
    api_patience_seconds: float = 60.0
    price_normal_cents: int = 30
    price_pro_cents: int = 150
    # The settings the providers' modules declare (``Option``), by key: their keys, base URLs, prices.
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def masked_api_key(self) -> str:
        from .redact import mask_key

        return mask_key(self.api_key) if self.api_key else "(not set)"

    def option(self, key: str) -> Any:
        """A provider's setting (``Option.key``): its value, else its default."""
        if key in self.extra:
            return self.extra[key]
        return next((o.default for o in provider_options() if o.key == key), None)

    @property
    def api_keys(self) -> Tuple[str, ...]:
        """Every key and secret set, to be masked wherever text is printed (the lists of keys of
        team mode included)."""
        secrets: List[Any] = []
        for value in (self.extra.get(o.key) for o in provider_options() if o.secret):
            if isinstance(value, (list, tuple)):  # (key, limit) pairs, or config.yaml's {key: ...} entries
                secrets.extend(v[0] if isinstance(v, tuple) else v.get("key") if isinstance(v, dict) else v
                               for v in value)
            else:
                secrets.append(value)
        return tuple(str(key) for key in (self.api_key, self.openai_api_key, *secrets) if key)

    def with_secret(self, env: str, value: str) -> "Settings":
        """These settings with the key setting ``env`` (e.g. ``SORA_API_KEY``) set to ``value``: how a
        client of one of several keys is opened."""
        name = field_of(env)
        if name in Settings.__dataclass_fields__:
            return dataclasses.replace(self, **{name: value})
        return dataclasses.replace(self, extra={**self.extra, name: value})

    def __repr__(self) -> str:  # the keys must never reach a log line through repr()
        from .redact import mask_key

        def shown(name: str) -> str:
            value = getattr(self, name)
            if name in ("api_key", "openai_api_key"):
                return mask_key(value) if value else "(not set)"
            if name == "extra":
                secret = {o.key for o in provider_options() if o.secret}
                return repr({k: ((mask_key(v) if isinstance(v, str) else f"({len(v)} keys)") if k in secret and v
                                 else v) for k, v in value.items()})
            return repr(value)

        fields = ", ".join(f"{f.name}={shown(f.name)}" for f in dataclasses.fields(self) if f.repr)
        return f"Settings({fields})"


# (environment / .env / config.yaml name, Settings field, parser). The names are the ones users of
# the earlier tool already have in their .env files.
SPECS: Tuple[Tuple[str, str, Callable[[Any], Any]], ...] = (
    ("SORA_API_KEY", "api_key", _optional_str),
    ("SORA_BASE_URL", "base_url", lambda v: str(v).strip().rstrip("/")),
    ("PROVIDER", "provider", _provider),
    ("OPENAI_API_KEY", "openai_api_key", _optional_str),
    ("OPENAI_BASE_URL", "openai_base_url", lambda v: str(v).strip().rstrip("/")),
    ("OPENAI_PRICE_CENTS_PER_SECOND", "openai_prices", _price_table),
    ("MAX_CONCURRENT_TASKS", "max_concurrent_tasks", _int_at_least(1)),
    ("GEN_COUNT_PER_SEGMENT", "gen_count_per_segment", _int_at_least(1)),
    ("HTTP_PROXY", "http_proxy", _optional_str),
    ("HTTPS_PROXY", "https_proxy", _optional_str),
    ("NO_PROXY", "no_proxy", _optional_str),
    ("LEDGER_DATABASE_URL", "database_url", _optional_str),
    ("LEDGER_BUSY_TIMEOUT", "busy_timeout", _positive_float),
    ("INPUT_DIR", "input_dir", lambda v: Path(str(v).strip())),
    ("OUTPUT_DIR", "output_dir", lambda v: Path(str(v).strip())),
    ("OUTPUT_MODE", "output_mode", _choice(*OUTPUT_MODES)),
    ("DEFAULT_DURATION", "default_duration", _duration),
    ("DEFAULT_RESOLUTION", "default_resolution", _choice(*RESOLUTIONS)),
    ("DEFAULT_IS_PRO", "default_is_pro", parse_bool),
    ("DEFAULT_REMOVE_WATERMARK", "default_remove_watermark", parse_bool),
    ("DEFAULT_QUALITY", "default_quality", _choice(*QUALITIES)),
    ("CONNECT_TIMEOUT", "connect_timeout", _positive_float),
    ("READ_TIMEOUT", "read_timeout", _positive_float),
    ("MAX_DOWNLOAD_BYTES", "max_download_bytes", _byte_size),
    ("DOWNLOAD_MIN_BYTES_PER_SECOND", "download_min_bytes_per_second", _int_at_least(0)),
    ("DOWNLOAD_SPEED_TIME", "download_speed_time", _positive_float),
    ("DOWNLOAD_TIMEOUT", "download_timeout", _positive_float),
    ("POLL_TIMEOUT_SECONDS", "poll_timeout_seconds", _positive_float),
    ("POLL_MIN_INTERVAL", "poll_min_interval", _positive_float),
    ("POLL_MAX_INTERVAL", "poll_max_interval", _positive_float),
    ("POLL_MAX_PER_SECOND", "poll_max_per_second", _positive_float),
    ("MAX_ATTEMPTS", "max_attempts", _int_at_least(1)),
    ("RETRY_BASE_DELAY", "retry_base_delay", _positive_float),
    ("RETRY_MAX_DELAY", "retry_max_delay", _positive_float),
    ("RECONCILE_GRACE_SECONDS", "reconcile_grace_seconds", _positive_float),
    ("RECONCILE_SKEW_SECONDS", "reconcile_skew_seconds", _positive_float),
    ("LEASE_SECONDS", "lease_seconds", _positive_float),
    ("MAX_CLOCK_SKEW_SECONDS", "max_clock_skew_seconds", _positive_float),
    ("API_PATIENCE_SECONDS", "api_patience_seconds", _positive_float),
    ("PRICE_NORMAL_CENTS", "price_normal_cents", _int_at_least(0)),
    ("PRICE_PRO_CENTS", "price_pro_cents", _int_at_least(0)),
)
# Proxy variables are conventionally lower-case too; requests honours both spellings.
_ALIASES = {"http_proxy": "HTTP_PROXY", "https_proxy": "HTTPS_PROXY", "no_proxy": "NO_PROXY"}


def _check_base_url(url: str, source: str, name: str = "SORA_BASE_URL",
                    example: str = "https://api.sora.hk/v1") -> None:
    """Refuse a base URL requests could not use, before anything is sent to it."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when it is not a number in 0..65535
    except ValueError as exc:
        raise ConfigError(f"{name} {url!r} (from {source}) is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0 or any(c.isspace() for c in url):
        raise ConfigError(f"{name} {url!r} (from {source}) is not an http(s) URL; expected e.g. {example}")


def _read_env(path: Path) -> Dict[str, str]:
    from dotenv import dotenv_values

    return _normalise_env(dotenv_values(path))


def _read_yaml(path: Path) -> Dict[str, Any]:
    import yaml  # loaded only where a config.yaml exists: every command would pay for it otherwise

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read settings: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of SETTING: value at the top level")
    return {str(k).upper(): v for k, v in data.items() if v is not None}


def _normalise_env(values: Mapping[str, Optional[str]]) -> Dict[str, str]:
    known = {env for env, _, _ in SPECS} | {o.env for o in provider_options()}
    out: Dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        name = _ALIASES.get(key, key)
        if name in known and (name not in out or key == name):
            out[name] = value
    return out


def load_settings(
    cwd: Path,
    environ: Mapping[str, str],
    overrides: Optional[Mapping[str, Any]] = None,
) -> Settings:
    """Build the settings from every layer. ``overrides`` maps field names to flag values;
    ``None`` means the flag was not given."""
    layers = [
        ("default", {}),
        ("config.yaml", _read_yaml(cwd / "config.yaml") if (cwd / "config.yaml").is_file() else {}),
        (".env", _read_env(cwd / ".env") if (cwd / ".env").is_file() else {}),
        ("environment", _normalise_env(environ)),
    ]
    values: Dict[str, Any] = {}
    extra: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    secrets = {"api_key", "openai_api_key"} | {o.key for o in provider_options() if o.secret}
    specs = [(env, field, parse, values) for env, field, parse in SPECS]
    specs += [(o.env, o.key, o.parse, extra) for o in provider_options()]
    for env_name, field, parse, into in specs:
        for source, layer in reversed(layers):
            if env_name in layer:
                raw = layer[env_name]
                try:
                    into[field] = parse(raw)
                except (TypeError, ValueError) as exc:
                    shown = "***" if field in secrets else repr(raw)
                    raise ConfigError(f"{env_name}={shown} from {source}: {exc}") from exc
                sources[field] = source
                break
        else:
            sources[field] = "default"
    for field, value in (overrides or {}).items():
        if value is not None:
            values[field] = value
            sources[field] = "flag"
    if not values.get("database_url"):
        values["database_url"] = f"sqlite:///{(cwd / 'ledger.db').as_posix()}"
    for field in ("input_dir", "output_dir"):
        path = Path(values.get(field, getattr(Settings, field)))
        values[field] = path if path.is_absolute() else cwd / path
    settings = Settings(**values, extra=extra, sources=sources)
    _check_base_url(settings.base_url, sources["base_url"])
    _check_base_url(settings.openai_base_url, sources["openai_base_url"], "OPENAI_BASE_URL",
                    "https://api.openai.com/v1")
    for option in provider_options():
        if option.url_example is not None:
            _check_base_url(settings.option(option.key), sources[option.key], option.env, option.url_example)
    if settings.poll_min_interval > settings.poll_max_interval:
        raise ConfigError("POLL_MIN_INTERVAL must not exceed POLL_MAX_INTERVAL")
    _check_defaults(settings)
    return settings


def _check_defaults(settings: Settings) -> None:
    """The default generation parameters must be ones the default provider takes (a storyboard
    naming another provider is checked against that one when it is scanned)."""
    from .providers import default_problem  # the providers' tables of allowed values import these settings

    problem = default_problem(settings)
    if problem:
        raise ConfigError(problem)
