"""The manual pages (man/): mandoc finds nothing to warn about, they render, and they document
what the code defines.

The coverage tests read the mdoc source, so they need no mandoc. A subcommand or option added
to the parser (`rctlpolicy.cli.build_parser`), a key added to the policy or configuration
format, or a metric family, resource, action or environment variable added to the code without
its place in the manual fails here. The examples are run or linted, so the manual cannot show
output rctlpolicy does not print or a policy that does not load.

The last test builds an sdist, which the FreeBSD port fetches (MASTER_SITES=PYPI), and checks
that it carries the man pages and everything else the port installs from it.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rctlpolicy.cli import build_parser, main
from rctlpolicy.cli.sim import SIM_RCTL_OPTIONS
from rctlpolicy.config import FILE_KEYS, build_config, load_config_file
from rctlpolicy.metric_names import ALL_METRICS
from rctlpolicy.model import SUBJECT_ALIASES, Action, Resource
from rctlpolicy.onmatch import PLACEHOLDERS

REPO = Path(__file__).resolve().parents[1]
MAN_DIR = REPO / "man"
PAGE_8 = MAN_DIR / "rctlpolicy.8"
PAGE_5 = MAN_DIR / "rctlpolicy.yaml.5"
PAGES = (PAGE_8, PAGE_5)
PORT_MAKEFILE = REPO / "contrib" / "freebsd-port" / "sysutils" / "py-rctlpolicy" / "Makefile"

MANDOC = shutil.which("mandoc") or next(
    (path for path in ("/usr/bin/mandoc", "/usr/local/bin/mandoc") if Path(path).exists()), None
)
needs_mandoc = pytest.mark.skipif(MANDOC is None, reason="mandoc is not installed")

#: mandoc -Tlint levels at or above -W warning.
_MANDOC_PROBLEM = re.compile(r": (WARNING|ERROR|UNSUPP|BADARG|SYSERR):")


# --- reading mdoc --------------------------------------------------------------------------


def source(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def section(text: str, name: str) -> str:
    """The lines of `.Sh name` up to the next `.Sh`."""
    match = re.search(rf"^\.Sh {re.escape(name)}\n(.*?)(?=^\.Sh |\Z)", text, re.M | re.S)
    assert match is not None, f"no section {name}"
    return match.group(1)


def flags(text: str) -> set[str]:
    """Every option an `Fl` macro names: `Fl n` is -n, `Fl -rules-dir` is --rules-dir."""
    return {"-" + m.group(1).rstrip(",.;:)") for m in re.finditer(r"\bFl\s+([^\s|]+)", text)}


def item_lines(text: str) -> str:
    """The `.It` lines (list item heads), joined: where an option or key is described."""
    return "\n".join(line for line in text.splitlines() if line.startswith(".It "))


def synopsis_blocks(text: str) -> dict[tuple[str, ...], str]:
    """SYNOPSIS, one block per `.Nm` line, keyed by the command words of its `.Cm` line."""
    blocks: dict[tuple[str, ...], str] = {}
    for block in re.split(r"^\.Nm\n", section(text, "SYNOPSIS"), flags=re.M)[1:]:
        first = block.splitlines()[0] if block else ""
        path = tuple(first.split()[1:]) if first.startswith(".Cm ") else ()
        assert path not in blocks, f"two SYNOPSIS blocks for {' '.join(path) or 'rctlpolicy'}"
        blocks[path] = block
    return blocks


def literal_displays(text: str) -> list[str]:
    """The text of every `.Bd -literal` display, with roff's escapes undone."""
    displays = re.findall(r"^\.Bd -literal[^\n]*\n(.*?)^\.Ed$", text, re.M | re.S)
    return [display.replace("\\e", "\\").replace("\\&", "") for display in displays]


def word_in(word: str, text: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(word)}(?![\w-])", text) is not None


# --- the parser ------------------------------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """The parser and every subcommand parser, with its command words."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def documented_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The actions a manual documents: all but -h/--help and the subcommand dispatch."""
    return [
        action
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
    ]


def is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


COMMANDS = dict(commands(build_parser()))
#: Commands that need a SYNOPSIS block: every runnable command, and any with options.
SYNOPSIS_COMMANDS = [
    path
    for path, parser in COMMANDS.items()
    if (path and is_leaf(parser)) or any(a.option_strings for a in documented_actions(parser))
]


def _id(path: tuple[str, ...]) -> str:
    return " ".join(path) or "rctlpolicy"


# --- mandoc -------------------------------------------------------------------------------------


@needs_mandoc
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_mandoc_lint_finds_no_warnings(page: Path) -> None:
    assert MANDOC is not None
    result = subprocess.run(
        [MANDOC, "-Tlint", "-W", "warning", str(page)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    problems = [line for line in output.splitlines() if _MANDOC_PROBLEM.search(line)]
    assert not problems, "\n".join(problems)
    assert result.returncode == 0, output


@needs_mandoc
def test_rctlpolicy_8_is_style_clean() -> None:
    """mandoc -Tlint -Wstyle: nothing, but for cross-references to pages this host lacks."""
    assert MANDOC is not None
    result = subprocess.run(
        [MANDOC, "-Tlint", "-W", "style", str(PAGE_8)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    problems = [
        line
        for line in output.splitlines()
        if "STYLE:" in line and "referenced manual not found" not in line
    ]
    assert not problems, "\n".join(problems)


def test_rctlpolicy_8_input_lines_fit_80_bytes() -> None:
    wide = [
        f"{number}: {line}"
        for number, line in enumerate(source(PAGE_8).splitlines(), 1)
        if len(line.encode()) > 80 and not line.startswith(".")
    ]
    assert not wide, "\n".join(wide)


@needs_mandoc
@pytest.mark.parametrize(
    ("page", "title", "name_line"),
    [
        (PAGE_8, "RCTLPOLICY(8)", "rctlpolicy – RCTL resource policies for jails"),
        (PAGE_5, "RCTLPOLICY.YAML(5)", "rctlpolicy.yaml – rctlpolicy policy files"),
    ],
    ids=["rctlpolicy.8", "rctlpolicy.yaml.5"],
)
def test_pages_render(page: Path, title: str, name_line: str) -> None:
    assert MANDOC is not None
    result = subprocess.run(
        [MANDOC, "-Tutf8", str(page)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    text = re.sub(".\b", "", result.stdout)  # overstrike (bold, underline) to plain text
    assert text.startswith(title)
    assert name_line in text
    for heading in ("NAME", "DESCRIPTION", "FILES", "EXAMPLES", "SEE ALSO"):
        assert f"\n{heading}\n" in text


@needs_mandoc
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_fit_an_80_column_terminal(page: Path) -> None:
    assert MANDOC is not None
    result = subprocess.run(
        [MANDOC, "-Tascii", str(page)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    text = re.sub(".\b", "", result.stdout)
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, "\n".join(wide)


# --- rctlpolicy(8) against the parser ------------------------------------------------------


@pytest.mark.parametrize("path", SYNOPSIS_COMMANDS, ids=_id)
def test_every_option_is_in_its_commands_synopsis(path: tuple[str, ...]) -> None:
    blocks = synopsis_blocks(source(PAGE_8))
    assert path in blocks, f"SYNOPSIS has no '.Nm' block starting '.Cm {_id(path)}'"
    listed = flags(blocks[path])
    parser = COMMANDS[path]
    missing = [
        option
        for action in documented_actions(parser)
        for option in action.option_strings
        if option not in listed
    ]
    assert not missing, f"{_id(path)}: options missing from SYNOPSIS: {missing}"
    for action in documented_actions(parser):
        for choice in action.choices or ():
            assert word_in(str(choice), blocks[path]), f"{_id(path)}: choice {choice} of {action}"


def test_synopsis_names_only_real_commands_and_options() -> None:
    blocks = synopsis_blocks(source(PAGE_8))
    for path, block in blocks.items():
        assert path in COMMANDS, f"SYNOPSIS has a command the parser lacks: {_id(path)}"
        known = {o for a in documented_actions(COMMANDS[path]) for o in a.option_strings}
        if path == ("sim", "rctl"):  # read by the command itself, before rctl(8)'s own
            known.update(SIM_RCTL_OPTIONS)
        assert flags(block) <= known, f"{_id(path)}: not options: {flags(block) - known}"


@pytest.mark.parametrize("path", [p for p in SYNOPSIS_COMMANDS if p], ids=_id)
def test_every_command_is_described(path: tuple[str, ...]) -> None:
    description = section(source(PAGE_8), "DESCRIPTION")
    assert re.search(rf"^\.It Cm {re.escape(' '.join(path))}\b", description, re.M), (
        f"DESCRIPTION has no '.It Cm {' '.join(path)}' item"
    )


def test_every_option_is_described_in_a_list_item() -> None:
    described = flags(item_lines(source(PAGE_8)))
    options = {
        option
        for _, parser in COMMANDS.items()
        for action in documented_actions(parser)
        for option in action.option_strings
    }
    assert options - described == set()


def test_rule_language_names_every_resource_action_and_alias() -> None:
    rules = section(source(PAGE_8), "RULE LANGUAGE")
    names = [r.value for r in Resource] + [a.value for a in Action] + list(SUBJECT_ALIASES)
    missing = [name for name in names if not re.search(rf"\bCm {re.escape(name)}\b", rules)]
    assert not missing
    assert "The 31 signal actions" in rules
    assert len([a for a in Action if a.is_signal]) == 31


def test_every_metric_family_is_documented() -> None:
    metrics = section(source(PAGE_8), "METRICS")
    missing = [name for name in ALL_METRICS if not re.search(rf"\bVa {name}\b", metrics)]
    assert not missing


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    environment = item_lines(section(source(PAGE_8), "ENVIRONMENT"))
    read = set()
    for module in (REPO / "rctlpolicy").rglob("*.py"):
        text = module.read_text(encoding="utf-8")
        read |= set(re.findall(r"environ(?:\.get\(|\[)\s*[\"']([A-Z][A-Z0-9_]*)[\"']", text))
    assert read >= {"RCTLPOLICY_SIM_HOST", "NO_COLOR", "XDG_STATE_HOME"}
    missing = [name for name in sorted(read) if f".It Ev {name}" not in environment]
    assert not missing


def test_lint_example_output_is_what_lint_prints() -> None:
    example = next(d for d in literal_displays(source(PAGE_8)) if "| rctlpolicy lint -" in d)
    command, *expected = example.splitlines()
    match = re.fullmatch(r"\$ printf '(.*)' \| rctlpolicy lint -", command)
    assert match is not None, command
    result = subprocess.run(
        [sys.executable, "-m", "rctlpolicy", "lint", "-"],
        input=match.group(1).replace("\\n", "\n"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == expected


# --- rctlpolicy.yaml(5) against the formats --------------------------------------------------


def test_every_configuration_key_is_described() -> None:
    items = item_lines(section(source(PAGE_5), "CONFIGURATION FILE"))
    missing = [
        key for key in FILE_KEYS if not re.search(rf"^\.It Cm {re.escape(key)}\b", items, re.M)
    ]
    assert not missing


def test_every_policy_key_is_described() -> None:
    # The validator's own key lists are the truth of what a policy file accepts; they are
    # private to the YAML loader, and this is the one place outside it that needs them.
    from rctlpolicy import policy_yaml

    text = source(PAGE_5)
    items = item_lines(text)
    listed = (*policy_yaml._TOP_KEYS, *policy_yaml._RULE_KEYS, *policy_yaml._ON_MATCH_KEYS)
    missing = [key for key in listed if not re.search(rf"^\.It Cm {key}\b", items, re.M)]
    assert not missing, f"no '.It Cm' item for {missing}"
    nested = (*policy_yaml._SERVICE_KEYS, *policy_yaml._MAX_RUNS_KEYS)
    missing = [key for key in nested if not re.search(rf"\bCm {key}\b", text)]
    assert not missing, f"not named with Cm: {missing}"


def test_every_placeholder_is_described() -> None:
    items = item_lines(section(source(PAGE_5), "EVENT ACTIONS"))
    missing = [name for name in PLACEHOLDERS if f".It Li {{{name}}}" not in items]
    assert not missing


#: A line of an rctl.conf example: a comment, a rule, or nothing.
_CONF_LINE = re.compile(r"#.*|[a-z]+:[^\s:]*:[a-z]+:[a-z0-9]+=[^\s/]+(/[a-z]+)?|")


def test_policy_examples_pass_strict_lint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checked = 0
    for number, display in enumerate(literal_displays(source(PAGE_5))):
        first = display.lstrip().splitlines()[0]
        if first.startswith("rules:"):
            path, text = tmp_path / f"example{number}.yaml", display
        elif first.startswith("run:"):
            on_match = "\n".join("      " + line for line in display.splitlines())
            text = f"rules:\n  - rule: jail:db1:swapuse:devctl=1g\n    on_match:\n{on_match}\n"
            path = tmp_path / f"example{number}.yaml"
        elif all(_CONF_LINE.fullmatch(line) for line in display.splitlines()):
            path, text = tmp_path / f"example{number}.conf", display
        else:
            continue
        path.write_text(text, encoding="utf-8")
        status = main(["lint", "--strict", str(path)])
        assert status == 0, f"example {number}:\n{text}\n{capsys.readouterr().out}"
        checked += 1
    assert checked >= 3


def test_configuration_example_loads(tmp_path: Path) -> None:
    display = next(d for d in literal_displays(source(PAGE_5)) if "web.listen-address:" in d)
    path = tmp_path / "rctlpolicy.yaml"
    path.write_text(display, encoding="utf-8")
    config = build_config(load_config_file(path), {})
    assert config.listen_address == ":10217"


# --- the sdist ---------------------------------------------------------------------------------

#: Not part of a source distribution: VCS, environments, caches, build output, local state.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", "*.pyc", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", ".hypothesis", ".demo",
)  # fmt: skip
#: Directories an sdist must carry whole (MANIFEST.in grafts them)...
_GRAFTED = ("man", "devd", "rc.d", "contrib", "rules", "docs")
#: ...but for what MANIFEST.in's global-exclude leaves out.
_EXCLUDED = ("*.py[cod]", "*~", "*.swp", "*.orig", "*.rej", ".DS_Store", "*.state.json",
             "*.state.yaml", "*.lock")  # fmt: skip


def test_sdist_carries_what_the_port_installs(tmp_path: Path) -> None:
    # Looked up, not imported: importing setuptools here would patch distutils for every test.
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment")
    tree = tmp_path / "src"
    shutil.copytree(REPO, tree, ignore=_NOT_SOURCE)
    out = tmp_path / "dist"
    out.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))",
            str(out),
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    archive = out / result.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as sdist:
        top = archive.name.removesuffix(".tar.gz")
        members = {
            name.removeprefix(f"{top}/")
            for name in sdist.getnames()
            if name.startswith(f"{top}/") and not name.endswith("/")
        }
    expected = {"LICENSE", "README.md", "rctlpolicy/py.typed"}
    expected |= {
        p.relative_to(REPO).as_posix() for p in (REPO / "rctlpolicy" / "data").glob("*.yaml")
    }
    for directory in _GRAFTED:
        expected |= {
            p.relative_to(REPO).as_posix()
            for p in (REPO / directory).rglob("*")
            if p.is_file() and not any(fnmatch.fnmatch(p.name, x) for x in _EXCLUDED)
        }
    assert {"man/rctlpolicy.8", "man/rctlpolicy.yaml.5"} <= expected
    assert expected - members == set()
    # Everything the port's Makefile installs from ${WRKSRC} (the unpacked sdist).
    makefile = re.sub(r"\\\n\s*", " ", PORT_MAKEFILE.read_text(encoding="utf-8"))
    from_wrksrc = set(re.findall(r"\$\{WRKSRC\}/(\S+)", makefile))
    assert from_wrksrc
    assert from_wrksrc - members == set()
    # The suite runs from a checkout (its data in tests/data); an sdist carries no tests.
    assert not [name for name in members if name.startswith("tests/") or name.endswith(".pyc")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_macro_is_glued_to_the_end_of_a_text_line(page: Path) -> None:
    """A macro only works at the start of a line: `acted..Pp` prints `..Pp` and starts no
    paragraph, and mandoc's lint does not see it."""
    glued = [
        f"{number}: {line}"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if not line.startswith(".") and re.search(r"\S\.(Pp|Sh|Ss|It|Bl|El|Bd|Ed)\s*$", line)
    ]
    assert glued == []
