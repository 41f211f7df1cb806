"""`NamedTuple` and `Protocol` for the modules `rctlpolicy lint` imports, without `typing`.

pre-commit runs `rctlpolicy lint` on every commit, so its start-up is a product feature, and
importing `typing` alone costs about 2.5 ms of it (a tenth of what it may spend beyond Python's
own start). Type checkers see `typing.NamedTuple` and `typing.Protocol`, so nothing changes for
them. At run time:

- `class Rule(NamedTuple): ...` is made by `collections.namedtuple` from the class's annotated
  fields and their defaults, and keeps the class's methods, properties, class methods and
  docstring: what `typing.NamedTuple` does, less its checks of the annotations (mypy makes
  them). tests/test_records.py compares the two.
- `Protocol` is a plain base class: protocols here only describe what callers pass.

Write `TYPE_CHECKING = False` (mypy honours the name) rather than importing it from typing.
"""

from __future__ import annotations

__all__ = ["NamedTuple", "Protocol"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple, Protocol
else:
    from collections import namedtuple

    #: What a class body holds besides fields and methods.
    _NOT_COPIED = frozenset(
        {"__module__", "__qualname__", "__annotations__", "__dict__", "__weakref__"}
    )

    class _NamedTupleMeta(type):
        def __new__(mcls, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcls, name, bases, namespace)
            annotations = namespace.get("__annotations__", {})
            fields = tuple(annotations)
            defaults = [namespace[field] for field in fields if field in namespace]
            if any(field not in namespace for field in fields[len(fields) - len(defaults) :]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            record = namedtuple(name, fields, defaults=defaults, module=namespace.get("__module__"))
            for key, value in namespace.items():
                if key not in _NOT_COPIED and key not in fields:
                    setattr(record, key, value)
            record.__annotations__ = annotations
            record.__qualname__ = namespace.get("__qualname__", name)
            return record

    class NamedTuple(metaclass=_NamedTupleMeta):
        """Base of a record class (see the module's documentation)."""

    class Protocol:
        """Base of a protocol class: documentation at run time."""
