"""Architecture presets (``arch='tiny'``, ``'l1'``, ...) and explicit arguments, resolved one way for every backbone."""
from collections.abc import Mapping
from typing import Any


def _normalized(value: Any) -> Any:
    """Lists and tuples compare alike, nested ones too."""
    if isinstance(value, (list, tuple)):
        return tuple(_normalized(v) for v in value)
    return value


def resolve_arch(arch: str | None, presets: Mapping[str, Mapping[str, Any]], given: Mapping[str, Any],
                 defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture arguments of a backbone.

    Args:
        arch: A key of ``presets``, or None.
        presets: The architectures by name, each with a value for every key of ``defaults``.
        given: The explicit arguments; None means not given.
        defaults: The values without ``arch`` for arguments not given.

    An argument given together with ``arch`` must equal the preset's value (a config
    may repeat it); a different value raises instead of being silently overridden.
    """
    if arch is not None and arch not in presets:
        raise ValueError(f'arch must be one of {sorted(presets)} or None (explicit arguments), got {arch!r}')
    base = presets[arch] if arch is not None else defaults
    resolved = {}
    for name in defaults:
        value = given.get(name)
        if value is None:
            resolved[name] = base[name]
        elif arch is not None and _normalized(value) != _normalized(base[name]):
            raise ValueError(f'arch={arch!r} sets {name}={base[name]!r}, but {name}={value!r} was given too: '
                             f'give arch or {name}, not both with different values')
        else:
            resolved[name] = value
    return resolved

