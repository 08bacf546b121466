"""The exception types that end a run with one line instead of a traceback."""

import math
import signal


class ConfigError(ValueError):
    """A user-supplied value is not allowed.

    ``key`` is the option's path relative to the object that raised it (``"penalty.weight"``,
    ``"num_samples"``); ``train.py`` prefixes the config group (``model.``, ``data.``) and prints
    one line instead of a traceback.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")

    def with_prefix(self, prefix: str) -> "ConfigError":
        return ConfigError(f"{prefix}.{self.key}" if prefix else self.key, self.message)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (or its type name), for one-line reports."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_int(key: str, value: object, minimum: int = 1, maximum: int | None = None) -> None:
    """Refuse anything but an integer in [minimum, maximum] (bools and floats included)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"must be an integer <= {maximum}, got {value!r}")


def check_number(
    key: str,
    value: object,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    strict: bool = False,
    strict_maximum: bool = False,
) -> float:
    """A finite real number in [minimum, maximum] (bounds left out are open; ``strict`` and
    ``strict_maximum`` exclude the bound), returned as a float; bools, strings, NaN and infinity
    are refused with a :class:`ConfigError` on ``key``. The one number check of the package:
    options of penalties, weight controllers, modules, nets and data all use it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    low = minimum is not None and (value < minimum or (strict and value == minimum))
    high = maximum is not None and (value > maximum or (strict_maximum and value == maximum))
    if low or high:
        parts = []
        if minimum is not None:
            parts.append(f"{'>' if strict else '>='} {minimum:g}")
        if maximum is not None:
            parts.append(f"{'<' if strict_maximum else '<='} {maximum:g}")
        raise ConfigError(key, f"must be a finite number {' and '.join(parts)}, got {value!r}")
    return float(value)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, signal_name: str, generator_step: int | None, path: object) -> None:
        self.signal_name = signal_name
        self.generator_step = generator_step
        self.path = path
        where = "" if generator_step is None else f" at generator step {generator_step}"
        super().__init__(f"{signal_name}{where}; wrote {path}")

    @property
    def exit_status(self) -> int:
        """128 + the signal number, the shell's convention for a process ended by a signal."""
        return 128 + int(signal.Signals[self.signal_name])


class NonFiniteError(Exception):
    """A loss, penalty, gradient or data batch held NaN or infinite values (see
    :class:`lit_gp.callbacks.NonFiniteGuard`); the weights were not updated with it."""
