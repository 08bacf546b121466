"""The one exception type for bad user input."""


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
