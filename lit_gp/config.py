"""Building objects from Hydra-style specs, with errors that name the config key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit_gp.errors import ConfigError, first_line

Spec = Mapping[str, Any]


def is_spec(value: Any) -> bool:
    """True for a mapping (dict or DictConfig), the form a ``_target_`` spec takes."""
    return isinstance(value, (Mapping, DictConfig))


def plain(value: Any) -> Any:
    """Hydra containers to plain dicts/lists, so checkpoints load with weights_only=True."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def storable_hyperparameters(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments a module can save as hyperparameters: specs (as plain containers), strings,
    numbers, None and lists of those. Objects are left out: loading them would need
    weights_only=False."""
    return {name: plain(value) for name, value in arguments.items() if _storable(value)}


def _storable(value: Any) -> bool:
    if isinstance(value, (list, tuple, ListConfig)):
        return all(_storable(item) for item in value)
    return value is None or is_spec(value) or isinstance(value, (str, int, float))


def build(spec: Any, key: str, partial: bool = False, recursive: bool = True, **kwargs: Any) -> Any:
    """Instantiate a ``_target_`` spec (objects pass through unchanged).

    A :class:`ConfigError` raised while building is re-raised with ``key`` prefixed; any other
    failure becomes a ConfigError naming ``key`` and the target.
    """
    if not is_spec(spec):
        return spec
    if "_target_" not in spec:
        raise ConfigError(key, "needs a _target_ naming the class or function to use")
    try:
        container = spec if recursive is False else plain(spec)
        return instantiate(
            container, _partial_=partial, _recursive_=recursive, _convert_="all", **kwargs
        )
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, ConfigError):
            raise cause.with_prefix(key) from None
        message = first_line(cause or error)
        raise ConfigError(key, f"cannot build {spec['_target_']}: {message}") from None
    except ConfigError as error:
        raise error.with_prefix(key) from None
    except OmegaConfBaseException as error:
        # A value that does not resolve, e.g. an interpolation of a non-number.
        raise ConfigError(key, first_line(error)) from None


def call_factory(factory: Callable[..., Any], key: str, *args: Any) -> Any:
    """Call an optimizer or scheduler factory; a bad argument becomes a ConfigError on ``key``."""
    try:
        return factory(*args)
    except ConfigError as error:
        raise error.with_prefix(key) from None
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(key, first_line(error)) from None


def _integer(value: Any) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    return int(number)


def _multiply(*factors: int) -> int:
    product = 1
    for factor in factors:
        product *= _integer(factor)
    return product


def _add(*terms: int) -> int:
    return sum(_integer(term) for term in terms)


def register_resolvers() -> None:
    """Integer arithmetic for configs that convert generator steps into Lightning's units:
    ``${lit_gp.mul:a,b}`` (product) and ``${lit_gp.add:a,b}`` (sum)."""
    OmegaConf.register_new_resolver("lit_gp.mul", _multiply, replace=True)
    OmegaConf.register_new_resolver("lit_gp.add", _add, replace=True)
