"""The one exception type that deepstab raises for problems a user can fix, and the check
of run settings that raises it."""


class DeepstabError(Exception):
    """A problem with the user's input, data or files.

    The message is one paragraph that says what was wrong and how to fix it.
    The command line prints it without a traceback and exits with status 2.
    """


def check_settings(settings, choices: dict | None = None, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """Raise a :class:`DeepstabError` naming the first setting of ``settings`` (a run's
    dataclass) that is not one of its ``choices``, not a positive integer (``positive``), or
    negative (``non_negative``; ``None`` passes)."""
    for name, allowed in (choices or {}).items():
        if getattr(settings, name) not in allowed:
            raise DeepstabError(f"{name} must be one of {', '.join(map(str, allowed))}, got {getattr(settings, name)!r}.")
    for name in positive:
        if int(getattr(settings, name)) < 1:
            raise DeepstabError(f"{name} must be a positive integer, got {getattr(settings, name)}.")
    for name in non_negative:
        if (getattr(settings, name) or 0) < 0:
            raise DeepstabError(f"{name} must be zero or positive, got {getattr(settings, name)}.")
    if hasattr(settings, "lr") and not settings.lr > 0:
        raise DeepstabError(f"lr must be positive, got {settings.lr}.")
