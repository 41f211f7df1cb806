"""devd/rctlpolicy.conf: devd.conf(5) syntax and the hook action's quoting.

A syntax error in a file under /usr/local/etc/devd makes devd exit at its next start, so the
shipped example is parsed here with a small checker of devd.conf's token syntax (after
sbin/devd/token.l and parse.y): statements end with `;`, blocks are
`attach|detach|nomatch|notify NUMBER { ... };` or `options { ... };`, strings are quoted,
comments are `#`, `//` and `/* */`. FreeBSD 14+ devd shell-quotes every `$var` it expands
in an action, which breaks inside quotes; the checker reports any such variable.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVD_CONF = REPO / "devd" / "rctlpolicy.conf"

EVENT_BLOCKS = ("attach", "detach", "nomatch", "notify")
ONE_STRING_STATEMENTS = ("action", "device-name", "class", "subdevice", "media-type")
#: Variables devd defines for an RCTL notify event (devd.conf(5), kern_rctl.c).
RCTL_VARIABLES = {"system", "subsystem", "type", "rule", "pid", "ruid", "jail", "timestamp"}


class DevdSyntaxError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "word", "number", "string", "punct"
    text: str
    line: int


@dataclass
class Block:
    kind: str
    priority: int
    line: int
    matches: list[tuple[str, str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


_WORD = re.compile(r"[A-Za-z][-_A-Za-z0-9]*")
_NUMBER = re.compile(r"[0-9]+")


def tokenize(text: str) -> list[Token]:
    """devd.conf tokens; a string's value has its continuations joined and `\\"` unescaped."""
    tokens: list[Token] = []
    i, line = 0, 1
    while i < len(text):
        char = text[i]
        if char == "\n":
            line += 1
            i += 1
        elif char in " \t\r":
            i += 1
        elif char == "#" or text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise DevdSyntaxError(line, "unterminated /* comment")
            line += text.count("\n", i, end)
            i = end + 2
        elif char == '"':
            start_line = line
            value: list[str] = []
            i += 1
            while True:
                if i >= len(text):
                    raise DevdSyntaxError(start_line, "unterminated string")
                if text[i] == '"':
                    i += 1
                    break
                if text.startswith("\\\n", i):
                    # A continuation: the next line's leading blanks are skipped.
                    line += 1
                    i += 2
                    while i < len(text) and text[i] in " \t":
                        i += 1
                elif text.startswith('\\"', i):
                    value.append('"')
                    i += 2
                elif text[i] == "\n":
                    raise DevdSyntaxError(start_line, "newline inside a string")
                else:
                    value.append(text[i])
                    i += 1
            tokens.append(Token("string", "".join(value), start_line))
        elif char in "{};":
            tokens.append(Token("punct", char, line))
            i += 1
        elif match := _NUMBER.match(text, i):
            tokens.append(Token("number", match.group(), line))
            i = match.end()
        elif match := _WORD.match(text, i):
            tokens.append(Token("word", match.group(), line))
            i = match.end()
        else:
            raise DevdSyntaxError(line, f"unexpected character {char!r}")
    return tokens


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self) -> Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, kind: str, text: str | None = None) -> Token:
        token = self.peek()
        wanted = repr(text) if text else kind
        if token is None:
            last = self.tokens[-1].line if self.tokens else 1
            raise DevdSyntaxError(last, f"expected {wanted}, found end of file")
        if token.kind != kind or (text is not None and token.text != text):
            raise DevdSyntaxError(token.line, f"expected {wanted}, found {token.text!r}")
        self.position += 1
        return token

    def parse(self) -> list[Block]:
        blocks: list[Block] = []
        while (token := self.peek()) is not None:
            word = self.take("word")
            if word.text == "options":
                self.options()
            elif word.text in EVENT_BLOCKS:
                priority = int(self.take("number").text)
                blocks.append(self.event_block(Block(word.text, priority, word.line)))
            else:
                raise DevdSyntaxError(token.line, f"unknown statement {word.text!r}")
        return blocks

    def options(self) -> None:
        self.take("punct", "{")
        while not self.closing():
            word = self.take("word")
            if word.text in ("directory", "pid-file"):
                self.take("string")
            elif word.text == "set":
                self.take("word")
                self.take("string")
            else:
                raise DevdSyntaxError(word.line, f"unknown option {word.text!r}")
            self.take("punct", ";")
        self.take("punct", ";")

    def event_block(self, block: Block) -> Block:
        self.take("punct", "{")
        while not self.closing():
            word = self.take("word")
            if word.text == "match":
                variable = self.take("string").text
                block.matches.append((variable, self.take("string").text))
            elif word.text in ONE_STRING_STATEMENTS:
                value = self.take("string").text
                if word.text == "action":
                    block.actions.append(value)
            else:
                raise DevdSyntaxError(word.line, f"unknown statement {word.text!r} in a block")
            self.take("punct", ";")
        self.take("punct", ";")
        return block

    def closing(self) -> bool:
        token = self.peek()
        if token is not None and token.kind == "punct" and token.text == "}":
            self.position += 1
            return True
        return False


def parse_devd_conf(text: str) -> list[Block]:
    """The event blocks of a devd.conf text; DevdSyntaxError where devd would refuse it."""
    return _Parser(tokenize(text)).parse()


_VARIABLE_START = re.compile(r"[A-Za-z_*-]")
_VARIABLE = re.compile(r"[A-Za-z_*-][A-Za-z0-9_-]*")


def action_variables(action: str) -> list[tuple[str, str | None]]:
    """Each `$var` devd expands in an action, with the shell quote it sits inside (or None)."""
    found: list[tuple[str, str | None]] = []
    quote: str | None = None
    i = 0
    while i < len(action):
        char = action[i]
        if quote == "'":
            if char == "'":
                quote = None
        elif char == "\\":
            i += 1  # the shell takes the next character literally (outside single quotes)
        elif char in "'\"" and quote is None:
            quote = char
        elif char == '"' and quote == '"':
            quote = None
        if char == "$" and i + 1 < len(action):
            following = action[i + 1]
            if following == "$":
                i += 1  # `$$` is a literal `$` to devd
            elif _VARIABLE_START.match(following):
                variable = _VARIABLE.match(action, i + 1)
                assert variable is not None
                found.append((variable.group(), quote))
                i = variable.end() - 1
        i += 1
    return found


def quoted_variable_problems(action: str) -> list[str]:
    return [
        f"${name} is inside {quote} quotes: devd's own quoting of the value breaks there"
        for name, quote in action_variables(action)
        if quote is not None
    ]


# --- the checker itself -----------------------------------------------------------------

GOOD = [
    "notify 0 { };",
    '# comment\n// comment\n/* multi\nline */ notify 10 { match "system" "RCTL"; };',
    'options { directory "/etc/devd"; pid-file "/var/run/devd.pid"; set scsi "(da|sa)[0-9]+"; };',
    'notify 0 {\n\tmatch "type" "matched";\n\taction "logger a \\\n\t\tb $rule";\n};',
    'attach 5 { device-name "em[0-9]+"; action "echo $device-name"; };',
    'options {\n\tset nic-regex\n\t\t"(em|igb|\\\n\t\tix)[0-9]+";\n};',
    'nomatch 0 {\n#\taction "logger $bus";\n};',
    'notify 0 { match "type" "LINK_UP"; media-type "ethernet"; action "true"; };',
]


@pytest.mark.parametrize("text", GOOD)
def test_checker_accepts_valid_devd_conf(text: str) -> None:
    parse_devd_conf(text)


def test_checker_joins_continued_strings() -> None:
    (block,) = parse_devd_conf('notify 0 {\n\taction "logger a \\\n\t\tb $rule";\n};')
    assert block.actions == ["logger a b $rule"]


BAD = [
    ('notify 0 { match "system" "RCTL" };', 1, "expected ';'"),
    ('notify 0 { match "system" "RCTL"; }', 1, "expected ';', found end of file"),
    ('notify 0 {\n match system "RCTL"; };', 2, "expected string"),
    ('notify 0 { action "x";', 1, "end of file"),
    ('notify { action "x"; };', 1, "expected number"),
    ('notify 0 { action "x"; }; };', 1, "expected word"),
    ('notify 0 { run "x"; };', 1, "unknown statement 'run'"),
    ('notify 0 {\n action "x\n"; };', 2, "newline inside a string"),
    ('notify 0 { action "x; };', 1, "unterminated string"),
    ("/* never closed\nnotify 0 { };", 1, "unterminated"),
    ("notfiy 0 { };", 1, "unknown statement"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_checker_rejects_invalid_devd_conf(text: str, line: int, message: str) -> None:
    with pytest.raises(DevdSyntaxError) as caught:
        parse_devd_conf(text)
    assert caught.value.line == line
    assert message in str(caught.value)


QUOTING = [
    ("/bin/x --rule $rule --pid $pid", []),
    ('logger "rule $rule"', ["rule"]),
    ("logger 'rule $rule' $pid", ["rule"]),
    ('logger "a" $jail "b"', []),
    ("echo $$rule '$$'", []),  # `$$` is a literal dollar
    ("echo \\'$rule", []),  # an escaped quote opens nothing
    ("echo $(date) $ruid", []),
]


@pytest.mark.parametrize(("action", "quoted"), QUOTING)
def test_quoted_variables_are_found(action: str, quoted: list[str]) -> None:
    problems = quoted_variable_problems(action)
    assert [p.split()[0].lstrip("$") for p in problems] == quoted


def test_checker_sees_escaped_double_quotes_in_a_devd_string() -> None:
    (block,) = parse_devd_conf('notify 0 { action "logger \\"$rule\\""; };')
    assert quoted_variable_problems(block.actions[0]) == [
        "$rule is inside \" quotes: devd's own quoting of the value breaks there"
    ]


# --- the shipped file -------------------------------------------------------------------


@pytest.fixture(scope="module")
def rctl_block() -> Block:
    blocks = parse_devd_conf(DEVD_CONF.read_text())
    assert len(blocks) == 1
    return blocks[0]


def test_matches_rctl_rule_matched_events(rctl_block: Block) -> None:
    assert rctl_block.kind == "notify"
    assert dict(rctl_block.matches) == {
        "system": "RCTL",
        "subsystem": "rule",
        "type": "matched",
        "jail": "[-A-Za-z0-9_.]+",
    }


def devd_match(pattern: str, value: str) -> bool:
    """devd's match: the pattern compiled as POSIX ERE between ^ and $ (match::match in
    sbin/devd/devd.cc, REG_EXTENDED | REG_NOSUB | REG_ICASE; devd.conf(5): "All regular
    expressions have an implicit ^$ around them"); a leading ! inverts it."""
    inverted = pattern.startswith("!")
    body = pattern[1:] if inverted else pattern
    found = re.fullmatch(body, value, re.IGNORECASE) is not None
    return found != inverted


JAIL_NAMES_RUN = ["0", "db1", "db1.inner", "web-01_a", "Customer.DB-2", "a" * 255]
JAIL_NAMES_REFUSED = [
    "",  # a cut message without the jail= value: nothing to act on safely
    "x;reboot",
    "$(id)",
    "`id`",
    "a b",
    "db1|sh",
    "a&b",
    "a>b",
    "'q'",
    '"q"',
    "db1\\",
    "\u0436",  # not ASCII: old devd would pass the bytes as they are
    "db1\nreboot",
]


def test_only_plain_jail_names_reach_the_hook(rctl_block: Block) -> None:
    pattern = dict(rctl_block.matches)["jail"]
    # devd expands $variables in match patterns too, and anchors them itself.
    assert "$" not in pattern and not pattern.startswith("^")
    for name in JAIL_NAMES_RUN:
        assert devd_match(pattern, name), name
    for name in JAIL_NAMES_REFUSED:
        assert not devd_match(pattern, name), name
        # The names refused are exactly those a shell could read as more than a word.
    for name in JAIL_NAMES_RUN:
        assert shlex.quote(name) == name


def test_action_runs_rctlpolicy_handle_with_bare_variables(rctl_block: Block) -> None:
    (action,) = rctl_block.actions
    assert quoted_variable_problems(action) == []
    assert {name for name, _ in action_variables(action)} <= RCTL_VARIABLES
    assert shlex.split(action) == [
        "/usr/local/bin/rctlpolicy", "handle",
        "--rule", "$rule", "--pid", "$pid", "--ruid", "$ruid", "--jail", "$jail",
    ]  # fmt: skip


def test_file_tells_admins_hook_mode_and_the_daemon_exclude_each_other() -> None:
    comments = " ".join(
        line.lstrip("# ") for line in DEVD_CONF.read_text().splitlines() if line.startswith("#")
    )
    assert "never both" in comments
    assert "service devd restart" in comments
