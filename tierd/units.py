"""Human units in the policy file: sizes, durations, percentages, rates (pure functions).

- size: "4KiB", "256MiB", "1.5GiB", "512B", or a plain integer (bytes).  Binary (IEC) units
  only: "MB", "M", "kB", "G" are refused as ambiguous rather than guessed.
- duration: "500ms", "5s", "2m", "1h", or a plain number (seconds).
- fraction: "10%", "2.5%" -> 0.1, 0.025 (0%, or 0.01% .. 100% in steps of 0.01%).
- rate: "128MiB/s" (a size per second; also "/ms", "/m"), or a plain integer (bytes/s).
- Sizes and rates are at most MAX_BYTES (1024PiB, per second): more does not exist in one
  machine.  The limits make every value accepted print back as written (never "1e-07%").
- Amount: a size or a percentage of some total, resolved later against that total.

Errors are ``UnitError`` (a ValueError) with a message fit for the operator; policy.py adds
the file, line and key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import MappingProxyType

SIZE_UNITS = MappingProxyType(
    {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "PiB": 1 << 50})
AMBIGUOUS_SIZE = MappingProxyType({
    "k": "KiB", "K": "KiB", "kB": "KiB", "KB": "KiB", "M": "MiB", "MB": "MiB", "G": "GiB",
    "GB": "GiB", "T": "TiB", "TB": "TiB",
})
DURATION_UNITS = MappingProxyType({"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0})
MAX_BYTES = 1 << 60  # sizes and rates (per second): 1024PiB
FRACTION_STEP = 1e-4  # percentages: 0.01% steps

_NUM_UNIT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z%]*)\s*\Z")


class UnitError(ValueError):
    """A value that is not a valid size/duration/fraction/rate."""


def _split(value: str, what: str, example: str) -> tuple[float, str, str]:
    m = _NUM_UNIT.match(value)
    if not m:
        raise UnitError(f"{value!r} is not a {what} (e.g. {example})")
    num = float(m.group(1))
    if not math.isfinite(num) or num > 1e30:
        raise UnitError(f"{value!r} is too large")
    return num, m.group(2), m.group(1)


def _check_plain(value, what: str):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UnitError(f"expected a {what}, got {type(value).__name__} {value!r}")
    if isinstance(value, int) and abs(value) > 1 << 100:
        raise UnitError(f"{value!r} is too large")


def parse_size(value: str | int) -> int:
    """Bytes from "256MiB" / "4KiB" / 4096, at most MAX_BYTES."""
    n = _bytes(value)
    if n > MAX_BYTES:
        raise UnitError(f"{value!r} is more than {format_size(MAX_BYTES)}")
    return n


def _bytes(value: str | int) -> int:
    _check_plain(value, "size")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value != int(value):
            raise UnitError(f"{value!r} is not a whole number of bytes")
        if value < 0:
            raise UnitError(f"size {value!r} is negative")
        return int(value)
    if value.strip().startswith("-"):
        raise UnitError(f"size {value!r} is negative")
    num, unit, _ = _split(value, "size", '"256MiB", "4KiB", "1GiB"')
    if unit == "":
        unit = "B"
    if unit in AMBIGUOUS_SIZE:
        raise UnitError(f"ambiguous unit {unit!r} in {value!r}: write {AMBIGUOUS_SIZE[unit]}")
    if unit not in SIZE_UNITS:
        raise UnitError(f"unknown size unit {unit!r} in {value!r} (use B, KiB, MiB, GiB, TiB)")
    if unit == "B" and num != int(num):
        raise UnitError(f"{value!r} is not a whole number of bytes")
    return round(num * SIZE_UNITS[unit])  # "1.001KiB": to the nearest byte


def parse_duration(value: str | int | float) -> float:
    """Seconds from "500ms" / "5s" / "2m" / 5."""
    _check_plain(value, "duration")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise UnitError(f"duration {value!r} must be a finite number of seconds >= 0")
        return float(value)
    if value.strip().startswith("-"):
        raise UnitError(f"duration {value!r} is negative")
    num, unit, _ = _split(value, "duration", '"500ms", "5s", "2m"')
    if unit == "":
        unit = "s"
    if unit not in DURATION_UNITS:
        raise UnitError(f"unknown duration unit {unit!r} in {value!r} (use ms, s, m, h)")
    return num * DURATION_UNITS[unit]


def parse_fraction(value: str) -> float:
    """0.1 from "10%".  Only the percent form is accepted, so 0.1 and 10 cannot be confused."""
    if not isinstance(value, str):
        raise UnitError(f"expected a percentage such as \"10%\", got {value!r}")
    num, unit, _ = _split(value, "percentage", '"10%"')
    if unit != "%":
        raise UnitError(f"{value!r} is not a percentage (e.g. \"10%\")")
    if num > 100:
        raise UnitError(f"{value!r} is more than 100%")
    frac = num / 100.0
    if frac and (frac < FRACTION_STEP or abs(frac / FRACTION_STEP - round(frac / FRACTION_STEP)) > 1e-6):
        raise UnitError(f"{value!r}: a percentage is 0% or 0.01% .. 100%, with at most two decimals")
    return frac


def parse_rate(value: str | int) -> int:
    """Bytes per second from "128MiB/s" (or a plain integer of bytes per second), at most
    MAX_BYTES per second."""
    _check_plain(value, "rate")
    if isinstance(value, str):
        size, sep, per = value.partition("/")
        if not sep:
            raise UnitError(f"{value!r} is not a rate (e.g. \"128MiB/s\")")
        per = per.strip()
        if per not in DURATION_UNITS:
            raise UnitError(f"unknown time unit {per!r} in rate {value!r} (use /s)")
        n = int(_bytes(size) / DURATION_UNITS[per])
    else:
        n = _bytes(value)
    if n > MAX_BYTES:
        raise UnitError(f"{value!r} is more than {format_rate(MAX_BYTES)}")
    return n


@dataclass(frozen=True)
class Amount:
    """A size in bytes or a fraction (0..1) of a total that is known only later."""

    bytes: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.bytes is None) == (self.fraction is None):
            raise ValueError("Amount needs exactly one of bytes and fraction")
        if self.bytes is not None and self.bytes < 0:
            raise ValueError("Amount bytes must be >= 0")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError("Amount fraction must be within 0..1")

    def resolve(self, total: int) -> int:
        """Bytes: the size itself, or the fraction of ``total`` (rounded down)."""
        if self.bytes is not None:
            return self.bytes
        return int(total * self.fraction)  # type: ignore[operator]

    def comparable(self, other: Amount) -> bool:
        return (self.bytes is None) == (other.bytes is None)

    def __le__(self, other: Amount) -> bool:
        if not self.comparable(other):
            return NotImplemented
        if self.bytes is not None:
            return self.bytes <= other.bytes  # type: ignore[operator]
        return self.fraction <= other.fraction  # type: ignore[operator]

    def __str__(self) -> str:
        if self.bytes is not None:
            return format_size(self.bytes)
        return format_fraction(self.fraction)  # type: ignore[arg-type]


def parse_amount(value: str | int) -> Amount:
    """Amount from "10%" or a size ("256MiB", 4096)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return Amount(fraction=parse_fraction(value))
    return Amount(bytes=parse_size(value))


def format_size(n: int | float) -> str:
    """Largest binary unit with a value >= 1: 1536 -> "1.5KiB", 0 -> "0B"."""
    n = float(n)
    for unit in ("PiB", "TiB", "GiB", "MiB", "KiB"):
        if abs(n) >= SIZE_UNITS[unit]:
            return f"{n / SIZE_UNITS[unit]:.4g}{unit}"
    return f"{int(n)}B"


def format_rate(n: int | float) -> str:
    """128 << 20 -> "128MiB/s"."""
    return format_size(n) + "/s"


def format_fraction(f: float) -> str:
    """0.1 -> "10%"."""
    return f"{f * 100:g}%"


def format_duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.10g}m"
    if seconds < 1:
        return f"{seconds * 1000:.10g}ms"
    return f"{seconds:.10g}s"
