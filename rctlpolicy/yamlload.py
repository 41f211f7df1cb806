"""The one way rctlpolicy reads YAML: the policy, the daemon's config, the web config and the
simulated host file all come through here.

PyYAML's safe loader, plus what none of those files may do silently:

- a key given twice in one mapping is an error (PyYAML keeps the last one, so a second
  `rules-dir:` or `usage:` would quietly replace the first); `<<: *anchor` merge keys may still
  override, as YAML intends;
- a document of more than `max_nodes` nodes is refused before it is built, counting what
  aliases expand to (so neither a 1.6-million-item list nor a "billion laughs" of nested
  aliases can take minutes and gigabytes): a policy has thousands of nodes, not millions.

Errors are `YamlError` values with a 1-based line and column where PyYAML knows one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from rctlpolicy.codes import Code

#: No file rctlpolicy reads needs more; the largest real policies have tens of thousands.
MAX_NODES = 200_000

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent, yaml.AliasEvent)


@dataclass(frozen=True, slots=True)
class _Position:
    line: int
    column: int


class YamlError(ValueError):
    """A YAML document that cannot be read: syntax, a duplicate key, or too large.

    `line` and `column` are 1-based, or None when the problem has no position.
    `code` is the lint code a policy diagnostic uses: yaml-syntax, duplicate-key, yaml-too-large.
    """

    def __init__(
        self, message: str, line: int | None = None, column: int | None = None, *, code: str
    ) -> None:
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(where + message)
        self.message = message
        self.line = line
        self.column = column
        self.code = code


def _too_large(max_nodes: int) -> YamlError:
    return YamlError(
        f"the document has more than {max_nodes:,} YAML nodes (aliases counted as what they "
        "expand to); no rctlpolicy file needs that many",
        code=Code.YAML_TOO_LARGE,
    )


def _too_deep() -> YamlError:
    return YamlError("the document is nested too deeply to read", code=Code.YAML_SYNTAX)


def _count_nodes(text: str, max_nodes: int) -> None:
    """A cheap first pass over parser events (C speed with libyaml) that stops early."""
    count = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, _NODE_EVENTS):
            count += 1
            if count > max_nodes:
                raise _too_large(max_nodes)


def _expanded_size(root: yaml.Node, max_nodes: int) -> int:
    """Nodes a walk of the tree visits, aliases expanded; memoised per node, iterative."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if not children_done:
            if id(node) in open_nodes:
                raise YamlError("an alias refers to a node that contains it", code=Code.YAML_SYNTAX)
            open_nodes.add(id(node))
            stack.append((node, True))
            for child in children:
                if id(child) in open_nodes:
                    raise YamlError(
                        "an alias refers to a node that contains it", code=Code.YAML_SYNTAX
                    )
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        open_nodes.discard(id(node))
        total = 1 + sum(sizes.get(id(child), 1) for child in children)
        if total > max_nodes:
            raise _too_large(max_nodes)
        sizes[id(node)] = total
    return sizes[id(root)]


def _from_yaml_error(error: yaml.YAMLError) -> YamlError:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        message = str(error.problem or error.context or "malformed YAML")
        if mark is not None:
            return YamlError(message, mark.line + 1, mark.column + 1, code=Code.YAML_SYNTAX)
        return YamlError(message, code=Code.YAML_SYNTAX)
    return YamlError(str(error), code=Code.YAML_SYNTAX)


def compose(text: str, *, max_nodes: int = MAX_NODES) -> yaml.Node | None:
    """The document's node tree (with marks, for diagnostics), or None for an empty document.

    Duplicate keys are NOT refused here: a caller that reports diagnostics walks the tree and
    says where both keys are (`duplicate_keys`). Raises YamlError.
    """
    try:
        _count_nodes(text, max_nodes)
        root = yaml.compose(text, Loader=_Loader)
    except RecursionError:
        raise YamlError(
            "the document is nested too deeply to read", code=Code.YAML_SYNTAX
        ) from None
    except yaml.YAMLError as error:
        raise _from_yaml_error(error) from None
    if root is not None:
        _expanded_size(root, max_nodes)
    return root


def duplicate_keys(mapping: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
    """(repeated key node, first key node) for every scalar key given twice in `mapping`.

    Merge keys (`<<`) are not duplicates: YAML lets later keys override what they bring in.
    """
    first: dict[tuple[str, str], yaml.Node] = {}
    repeated: list[tuple[yaml.Node, yaml.Node]] = []
    for key_node, _ in mapping.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = (key_node.tag, key_node.value)
        if key in first:
            repeated.append((key_node, first[key]))
        else:
            first[key] = key_node
    return repeated


class _UniqueKeyConstructor(yaml.constructor.SafeConstructor):
    """Constructs Python data, refusing a mapping that names a key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            for repeated, earlier in duplicate_keys(node):
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{repeated.value}' is given twice (first on line "
                    f"{earlier.start_mark.line + 1})",
                    repeated.start_mark,
                )
        return super().construct_mapping(node, deep)


def load(text: str, *, max_nodes: int = MAX_NODES) -> Any:
    """The document as Python data (safe types only); raises YamlError for bad syntax, a key
    given twice (code duplicate-key) or a document past `max_nodes` (code yaml-too-large)."""
    root = compose(text, max_nodes=max_nodes)
    if root is None:
        return None
    constructor = _UniqueKeyConstructor()
    try:
        return constructor.construct_document(root)
    except yaml.constructor.ConstructorError as error:
        converted = _from_yaml_error(error)
        code = Code.DUPLICATE_KEY if "given twice" in converted.message else Code.YAML_SYNTAX
        raise YamlError(converted.message, converted.line, converted.column, code=code) from None
    except RecursionError:
        raise YamlError(
            "the document is nested too deeply to read", code=Code.YAML_SYNTAX
        ) from None
