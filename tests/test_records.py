"""rctlpolicy.records: a NamedTuple class made without typing behaves as typing's does."""

from __future__ import annotations

import pickle
import subprocess
import sys
import typing

import pytest

from rctlpolicy import records


def _make(base: type) -> type:
    class Point(base):  # type: ignore[misc, valid-type]
        """A point."""

        x: int
        y: int = 2
        label: str = "p"

        @property
        def total(self) -> int:
            return int(self.x + self.y)

        @classmethod
        def origin(cls) -> Point:
            return cls(0, 0)

        def moved(self, by: int) -> Point:
            return self._replace(x=self.x + by)

        def __str__(self) -> str:
            return f"{self.label}({self.x}, {self.y})"

    return Point


MINE, THEIRS = _make(records.NamedTuple), _make(typing.NamedTuple)


def test_a_record_behaves_as_a_typing_named_tuple() -> None:
    for cls in (MINE, THEIRS):
        point = cls(1)
        assert tuple(point) == (1, 2, "p")
        assert point == cls(1, 2, "p") == (1, 2, "p")
        assert hash(point) == hash((1, 2, "p"))
        assert point.total == 3
        assert cls.origin() == (0, 0, "p")
        assert point.moved(4).x == 5
        assert str(point) == "p(1, 2)"
        assert cls._fields == ("x", "y", "label")
        assert cls._field_defaults == {"y": 2, "label": "p"}
        assert cls.__doc__ == "A point."
        assert isinstance(point, tuple)
        with pytest.raises(AttributeError):
            point.x = 3  # type: ignore[misc]
    assert repr(MINE(1)) == repr(THEIRS(1))
    assert sorted([MINE(2), MINE(1)]) == [MINE(1), MINE(2)]
    assert MINE.__qualname__ == THEIRS.__qualname__
    assert MINE.__module__ == THEIRS.__module__ == __name__


def test_a_record_pickles() -> None:
    from rctlpolicy.model import Action, Resource, Rule, SubjectType

    rule = Rule(SubjectType.JAIL, "db1", Resource.MAXPROC, Action.DENY, 10, SubjectType.JAIL)
    assert pickle.loads(pickle.dumps(rule)) == rule


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError):

        class Bad(records.NamedTuple):
            x: int = 1
            y: int


def test_lint_imports_neither_typing_nor_pyparsing() -> None:
    """Start-up: `rctlpolicy lint` of a small rctl.conf needs neither."""
    program = (
        "import sys\n"
        "from rctlpolicy.cli import main\n"
        "main(['lint', '-'])\n"
        "print(sorted(m for m in ('typing', 'pyparsing', 'json', 'difflib', 'yaml')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        input="jail:db1:maxproc:deny=10\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "[]\n"
