"""Every check of a user-given argument, in one place.

Each check returns the value in its canonical type (``int``, ``float``) or raises a
:class:`~deepstab.errors.DeepstabError` that names the argument, says what it must be and what
was given. Numbers must be finite: ``inf`` and ``nan`` are refused everywhere.

Example:

>>> from deepstab import checks
>>> checks.positive_int("epochs", 3)
3
>>> checks.in_range("alpha", 1.5, 0.0, 1.0)
Traceback (most recent call last):
...
deepstab.errors.DeepstabError: alpha must lie in [0, 1], got 1.5.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from deepstab.errors import DeepstabError


def _number(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DeepstabError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise DeepstabError(f"{name} must be a finite number, got {value!r}.")
    return number


def _integer(name: str, value) -> int:
    number = _number(name, value)
    if number != int(number) or isinstance(value, bool):
        raise DeepstabError(f"{name} must be a whole number, got {value!r}.")
    return int(number)


def choice(name: str, value, allowed: Iterable):
    """``value`` if it is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise DeepstabError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}.")
    return value


def positive_int(name: str, value) -> int:
    """A whole number of at least 1."""
    number = _integer(name, value)
    if number < 1:
        raise DeepstabError(f"{name} must be a positive whole number, got {value!r}.")
    return number


def non_negative_int(name: str, value) -> int:
    """A whole number of at least 0."""
    number = _integer(name, value)
    if number < 0:
        raise DeepstabError(f"{name} must be zero or positive (a whole number), got {value!r}.")
    return number


def positive(name: str, value) -> float:
    """A finite number above 0."""
    number = _number(name, value)
    if not number > 0:
        raise DeepstabError(f"{name} must be positive, got {value!r}.")
    return number


def non_negative(name: str, value) -> float:
    """A finite number of at least 0."""
    number = _number(name, value)
    if number < 0:
        raise DeepstabError(f"{name} must be zero or positive, got {value!r}.")
    return number


def in_range(name: str, value, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float:
    """A finite number in ``[low, high]``; ``low_open`` / ``high_open`` exclude an end."""
    number = _number(name, value)
    above = low < number if low_open else low <= number
    below = number < high if high_open else number <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise DeepstabError(f"{name} must lie in {interval}, got {value!r}.")
    return number


def fraction(name: str, value) -> float:
    """A finite number in [0, 1]."""
    return in_range(name, value, 0.0, 1.0)


def share(name: str, value) -> float:
    """A finite number in [0, 1): a share of samples that leaves some out."""
    return in_range(name, value, 0.0, 1.0, high_open=True)


def int_at_least(name: str, value, low: int) -> int:
    """A whole number of at least ``low``."""
    number = _integer(name, value)
    if number < low:
        raise DeepstabError(f"{name} must be a whole number of at least {low}, got {value!r}.")
    return number


def n_clusters(name: str, value, n_samples: int | None = None) -> int:
    """The number of clusters K: at least 2, and at most ``n_samples`` when that is given."""
    k = _integer(name, value)
    if k < 2:
        raise DeepstabError(f"{name} must be at least 2, got {value!r}.")
    if n_samples is not None and k > n_samples:
        raise DeepstabError(
            f"n_clusters={k} is larger than the number of samples ({n_samples}). Use at most {n_samples} "
            f"clusters or give more data."
        )
    return k


AUTO = "auto"  # --n-clusters auto: K chosen from the embedding (deepstab.analysis.k_choice)


def n_clusters_or_auto(name: str, value, n_samples: int | None = None) -> int | str:
    """:func:`n_clusters`, or ``"auto"``."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        return n_clusters(name, value, n_samples)
    except DeepstabError:
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            raise DeepstabError(f"{name} must be a whole number of at least 2 or 'auto', got {value!r}.") from None
        raise


def k_range(name: str, value) -> str:
    """Candidate numbers of clusters as ``"LOW:HIGH"`` (inclusive), ``2 <= LOW < HIGH``."""
    parts = str(value).replace("..", ":").split(":")
    try:
        low, high = (int(p) for p in parts)
    except ValueError:
        raise DeepstabError(f"{name} must be two whole numbers as LOW:HIGH (say 2:30), got {value!r}.") from None
    if low < 2 or high <= low:
        raise DeepstabError(f"{name} must go from at least 2 to a larger number (say 2:30), got {value!r}.")
    return f"{low}:{high}"
