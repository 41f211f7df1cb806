"""The one YAML loader: duplicate keys refused, sizes bounded, errors positioned."""

from __future__ import annotations

import pytest
import yaml

from rctlpolicy import yamlload


def test_plain_document() -> None:
    assert yamlload.load("a: 1\nb: [x, y]\n") == {"a": 1, "b": ["x", "y"]}
    assert yamlload.load("") is None


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("rules-dir: /a\nrules-dir: /b\n", 2, 1),
        ("top:\n  usage: 1\n  other: 2\n  usage: 3\n", 4, 3),
        ("- {a: 1, a: 2}\n", 1, 10),
    ],
)
def test_a_key_given_twice_is_refused_where_it_repeats(text: str, line: int, column: int) -> None:
    with pytest.raises(yamlload.YamlError) as caught:
        yamlload.load(text)
    assert caught.value.code == "duplicate-key"
    assert (caught.value.line, caught.value.column) == (line, column)
    assert "given twice (first on line" in caught.value.message


def test_merge_keys_may_override() -> None:
    text = "base: &b {k: 1, j: 2}\nuse:\n  <<: *b\n  k: 3\n"
    assert yamlload.load(text)["use"] == {"k": 3, "j": 2}


def test_a_huge_list_is_refused_quickly() -> None:
    with pytest.raises(yamlload.YamlError) as caught:
        yamlload.load("- a\n" * 250_000)
    assert caught.value.code == "yaml-too-large"
    assert "200,000" in caught.value.message


def test_nested_aliases_count_as_what_they_expand_to() -> None:
    lines = ["- &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 7):
        refs = ", ".join([f"*l{n - 1}"] * 10)
        lines.append(f"- &l{n} [{refs}]")
    text = "\n".join(lines) + "\n"
    assert len(text) < 1000
    with pytest.raises(yamlload.YamlError) as caught:
        yamlload.compose(text)
    assert caught.value.code == "yaml-too-large"
    assert yamlload.compose(text, max_nodes=10**8) is not None


def test_a_recursive_alias_is_an_error_not_a_hang() -> None:
    with pytest.raises(yamlload.YamlError, match="contains it"):
        yamlload.load("&a [*a]\n")


def test_syntax_errors_have_positions() -> None:
    with pytest.raises(yamlload.YamlError) as caught:
        yamlload.load("a: [1\n")
    assert caught.value.code == "yaml-syntax"
    assert caught.value.line == 2


def test_compose_keeps_duplicates_for_the_caller_to_report() -> None:
    root = yamlload.compose("a: 1\nb: 2\na: 3\n")
    assert isinstance(root, yaml.MappingNode)
    [(repeated, first)] = yamlload.duplicate_keys(root)
    assert (repeated.start_mark.line, first.start_mark.line) == (2, 0)


def test_only_safe_types() -> None:
    with pytest.raises(yamlload.YamlError):
        yamlload.load("!!python/object/apply:os.system ['true']\n")
