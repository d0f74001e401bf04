"""Quoting, and the little SQL surgery restore needs on CREATE statements.

Every identifier casbackup puts into SQL goes through ``quote_identifier`` and
every value through ``quote_string``: table names with spaces, backticks or
unicode are real (the tests use them).

Rewriting a CREATE statement (restore under another database with ``--as``,
adding a table's original UUID) works on tokens, never on raw text: a lexer
that knows ClickHouse's quoted identifiers, string literals and comments means
a string containing ``src.`` or a column named like a database is never
touched by mistake.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import Enum


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def unquote_string(literal: str) -> str:
    """The value of a quoted string literal (``'it\\'s'`` or ``'it''s'``)."""
    quote = literal[0]
    return _unescape(literal[1:-1].replace(quote * 2, "\\" + quote))


def qualified(database: str, table: str) -> str:
    return f"{quote_identifier(database)}.{quote_identifier(table)}"


class Kind(Enum):
    WORD = "word"  # bare identifier or keyword
    QUOTED = "quoted"  # `identifier` or "identifier"
    STRING = "string"  # 'literal'
    NUMBER = "number"
    SPACE = "space"  # whitespace and comments
    PUNCT = "punct"


@dataclass(frozen=True)
class Token:
    kind: Kind
    text: str

    @property
    def identifier(self) -> str | None:
        """The name this token denotes, if it can be an identifier."""
        if self.kind is Kind.WORD:
            return self.text
        if self.kind is Kind.QUOTED:
            quote = self.text[0]
            return _unescape(self.text[1:-1].replace(quote * 2, "\\" + quote))
        return None


_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "0": "\0",
    "b": "\b",
    "f": "\f",
    "\\": "\\",
    "'": "'",
    "`": "`",
    '"': '"',
}


def _unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(_ESCAPES.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# Bare identifiers: ASCII letters, digits, _ and $, and any non-ASCII character.
# The class "\u0080-\U0010ffff" says the same but takes sre 7-10 ms to compile,
# paid by every command at start-up; "not ASCII" compiles in a fraction of one.
# Possessive (``*+``): a plain ``*`` group kept ~120 bytes per character for backtracking
# that a maximal munch never does, 2 GB for a 16 MiB word of an untrusted columns.txt.
_WORD = re.compile(r"(?:[A-Za-z_]|[^\x00-\x7f])(?:[A-Za-z0-9_$]|[^\x00-\x7f])*+")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*")
_SPACE = re.compile(r"\s+")


def tokenize(sql: str) -> Iterator[Token]:
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "`\"'":
            # Closing quote, unless escaped by a backslash or doubled (`a``b`, 'it''s').
            j = i + 1
            while j < n:
                if sql[j] == "\\" or (sql[j] == ch and j + 1 < n and sql[j + 1] == ch):
                    j += 2
                elif sql[j] == ch:
                    break
                else:
                    j += 1
            text = sql[i : j + 1]
            yield Token(Kind.STRING if ch == "'" else Kind.QUOTED, text)
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            yield Token(Kind.SPACE, sql[i:j])
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            yield Token(Kind.SPACE, sql[i:j])
            i = j
        elif m := _SPACE.match(sql, i):
            yield Token(Kind.SPACE, m.group())
            i = m.end()
        elif m := _WORD.match(sql, i):
            yield Token(Kind.WORD, m.group())
            i = m.end()
        elif m := _NUMBER.match(sql, i):
            yield Token(Kind.NUMBER, m.group())
            i = m.end()
        else:
            yield Token(Kind.PUNCT, ch)
            i += 1


def _significant(tokens: list[Token]) -> list[int]:
    return [i for i, t in enumerate(tokens) if t.kind is not Kind.SPACE]


def qualified_references(sql: str) -> set[tuple[str, str]]:
    """Every ``db.name`` pair in a statement (candidates for dependencies)."""
    tokens = list(tokenize(sql))
    idx = _significant(tokens)
    found: set[tuple[str, str]] = set()
    for a, dot, b in zip(idx, idx[1:], idx[2:], strict=False):
        left, right = tokens[a].identifier, tokens[b].identifier
        if left is not None and right is not None and tokens[dot].text == ".":
            found.add((left, right))
    return found


def bare_identifiers(sql: str) -> set[str]:
    """Identifiers not qualified by a database (``FROM t``), for same-database references."""
    tokens = list(tokenize(sql))
    idx = _significant(tokens)
    found: set[str] = set()
    for pos, i in enumerate(idx):
        name = tokens[i].identifier
        if name is None:
            continue
        before = tokens[idx[pos - 1]].text if pos > 0 else ""
        after = tokens[idx[pos + 1]].text if pos + 1 < len(idx) else ""
        if before != "." and after != ".":
            found.add(name)
    return found


# Keywords after which ``x.y`` names a table (or the object a statement creates).
_TABLE_POSITION = frozenset(
    {"FROM", "JOIN", "TO", "INTO", "TABLE", "IN", "VIEW", "DICTIONARY", "EXISTS"}
)


def rename_databases(
    sql: str, mapping: Mapping[str, str], known: AbstractSet[tuple[str, str]] | None = None
) -> str:
    """Replace the database part of ``db.name`` references per ``mapping``.

    ``x.y`` is also how a column is qualified by its table (``SELECT logs.id
    FROM logs.logs``). With ``known`` (the objects the caller knows exist),
    a pair is left alone only when it is provably such a column: its head
    names a table or an alias of this statement (``logs``, the table of
    ``FROM logs.logs``), and the pair is neither a known object, nor after a
    keyword that takes a table (FROM, JOIN, TO ...), nor the head of
    ``db.t.col``. Everything else is renamed: a reference left pointing at
    the original database would read it silently. Without ``known``, every
    pair is renamed (statements that hold no columns).
    """
    if not mapping:
        return sql
    tokens = list(tokenize(sql))
    idx = _significant(tokens)
    relations = _relation_names(tokens, idx) if known is not None else set()
    for pos, i in enumerate(idx[:-2]):
        name = tokens[i].identifier
        if name is None or name not in mapping or tokens[idx[pos + 1]].text != ".":
            continue
        before = tokens[idx[pos - 1]].text if pos > 0 else ""
        if before == ".":  # `a.b.c` column paths: only the head can be a database
            continue
        if known is not None and name in relations:
            second = tokens[idx[pos + 2]].identifier
            after = tokens[idx[pos + 3]].text if pos + 3 < len(idx) else ""
            if not ((name, second) in known or before.upper() in _TABLE_POSITION or after == "."):
                continue  # table.column
        tokens[i] = Token(Kind.QUOTED, quote_identifier(mapping[name]))
    return "".join(t.text for t in tokens)


def _relation_names(tokens: list[Token], idx: list[int]) -> set[str]:
    """Names a column can be qualified by here: tables after FROM/JOIN, and aliases after AS."""
    names: set[str] = set()
    for pos, i in enumerate(idx):
        word = tokens[i].text.upper()
        if word in ("FROM", "JOIN") and pos + 1 < len(idx):
            last = pos + 1  # `t`, or `db.t`: the table's own name is the last part
            if pos + 3 < len(idx) and tokens[idx[pos + 2]].text == ".":
                last = pos + 3
            if (table := tokens[idx[last]].identifier) is not None:
                names.add(table)
        elif (
            word == "AS"
            and pos + 1 < len(idx)
            and (alias := tokens[idx[pos + 1]].identifier) is not None
        ):
            names.add(alias)
    return names


_CREATE_HEAD = re.compile(
    r"^\s*(CREATE|ATTACH)\s+(OR\s+REPLACE\s+)?(TEMPORARY\s+)?"
    r"(TABLE|VIEW|MATERIALIZED\s+VIEW|LIVE\s+VIEW|WINDOW\s+VIEW|DICTIONARY|DATABASE)\s+"
    r"(IF\s+NOT\s+EXISTS\s+)?",
    re.IGNORECASE,
)


def statement_kind(sql: str) -> str:
    """'TABLE', 'VIEW', 'MATERIALIZED VIEW', 'DICTIONARY', 'DATABASE' ..."""
    m = _CREATE_HEAD.match(sql)
    if not m:
        raise ValueError("not a CREATE statement")
    return " ".join(m.group(4).upper().split())


def _name_span(sql: str) -> tuple[int, int, list[Token], list[int]]:
    """Token positions of the object name after the CREATE head: (first, last) indexes."""
    m = _CREATE_HEAD.match(sql)
    if not m:
        raise ValueError("not a CREATE statement")
    head = Token(Kind.SPACE, sql[: m.end()])
    tokens = [head, *tokenize(sql[m.end() :])]
    idx = _significant(tokens)
    if not idx:
        raise ValueError("CREATE statement without a name")
    first = idx[0]
    last = first
    if len(idx) >= 3 and tokens[idx[1]].text == ".":
        last = idx[2]
    return first, last, tokens, idx


def set_create_target(
    sql: str, database: str, name: str | None = None, uuid: str | None = None
) -> str:
    """Point a CREATE statement at ``database``.``name`` and optionally pin its UUID.

    Any UUID clause already present is replaced: a table restored under another
    name must get a fresh UUID, one restored in place keeps the original.
    """
    first, last, tokens, idx = _name_span(sql)
    kind = statement_kind(sql)
    current = tokens[last].identifier or ""
    target = (
        quote_identifier(database) if kind == "DATABASE" else qualified(database, name or current)
    )
    after = idx.index(last) + 1
    # Drop an existing `UUID '...'` right after the name.
    drop_until = last
    if (
        after + 1 < len(idx)
        and (tokens[idx[after]].text.upper() == "UUID")
        and tokens[idx[after + 1]].kind is Kind.STRING
    ):
        drop_until = idx[after + 1]
    replacement = target + (f" UUID {quote_string(uuid)}" if uuid else "")
    return (
        "".join(t.text for t in tokens[:first])
        + replacement
        + "".join(t.text for t in tokens[drop_until + 1 :])
    )


def create_target(sql: str) -> tuple[str | None, str]:
    """(database, name) a CREATE statement creates; database None when unqualified."""
    first, last, tokens, _ = _name_span(sql)
    name = tokens[last].identifier or ""
    database = tokens[first].identifier if last != first else None
    return database, name


def materialized_view_target(sql: str) -> tuple[str | None, str] | None:
    """The ``TO db.table`` of a materialized view, if it has one."""
    if statement_kind(sql) != "MATERIALIZED VIEW":
        return None
    _, last, tokens, idx = _name_span(sql)
    rest = [i for i in idx if i > last]
    pos = 0
    if (
        len(rest) >= 2
        and tokens[rest[0]].text.upper() == "UUID"
        and tokens[rest[1]].kind is Kind.STRING
    ):
        pos = 2
    if pos < len(rest) and tokens[rest[pos]].text.upper() == "TO":
        if pos + 1 < len(rest) and tokens[rest[pos + 1]].text.upper() == "INNER":
            return None  # TO INNER UUID '...': an inner table, not a target
        first_name = tokens[rest[pos + 1]].identifier
        if pos + 3 < len(rest) and tokens[rest[pos + 2]].text == ".":
            return first_name, tokens[rest[pos + 3]].identifier or ""
        return None, first_name or ""
    return None


def rename_dictionary_source(sql: str, mapping: Mapping[str, str]) -> str:
    """Map the database a dictionary's ClickHouse source reads: ``SOURCE(CLICKHOUSE(... DB 'x'))``.

    That name is a string literal, which ``rename_databases`` rightly never
    touches; only here, after the keyword DB inside a dictionary statement,
    is a string a database name.
    """
    if not mapping or statement_kind(sql) != "DICTIONARY":
        return sql
    tokens = list(tokenize(sql))
    idx = _significant(tokens)
    for pos, i in enumerate(idx[:-1]):
        following = tokens[idx[pos + 1]]
        if (
            tokens[i].kind is Kind.WORD
            and tokens[i].text.upper() == "DB"
            and following.kind is Kind.STRING
        ):
            current = _unescape(following.text[1:-1])
            if current in mapping:
                tokens[idx[pos + 1]] = Token(Kind.STRING, quote_string(mapping[current]))
    return "".join(t.text for t in tokens)


# Table engines whose arguments name a database, and which argument it is
# (0-based): the server keeps it as a string literal (26.x writes
# `Buffer('db', 't', …)` whatever was typed) or as a bare identifier (18.16).
# Dictionary's one argument is the string 'db.dictionary'; a bare name is the
# dictionary's own (18.16's dictionaries have no database).
_ENGINE_DATABASE_ARGUMENT = {"Buffer": 0, "Merge": 0, "Distributed": 1, "Dictionary": 0}


def rename_engine_database(sql: str, mapping: Mapping[str, str]) -> str:
    """Map the database a Buffer, Merge, Distributed or Dictionary table points at.

    ``rename_databases`` sees only ``db.name`` pairs, and these engines name
    their database as an argument of its own: a copy restored with ``--as``
    would otherwise flush its buffer into, or read, the original database.
    An argument that is an expression (``REGEXP('^shop')``,
    ``currentDatabase()``) is left as it is.
    """
    if not mapping:
        return sql
    tokens = list(tokenize(sql))
    idx = _significant(tokens)
    for pos in range(len(idx) - 3):
        if tokens[idx[pos]].text.upper() != "ENGINE" or tokens[idx[pos + 1]].text != "=":
            continue
        engine = tokens[idx[pos + 2]].text
        if engine not in _ENGINE_DATABASE_ARGUMENT or tokens[idx[pos + 3]].text != "(":
            continue
        arguments: list[list[int]] = [[]]
        depth = 0
        for i in idx[pos + 4 :]:
            text = tokens[i].text
            if depth == 0 and text == ")":
                break
            if depth == 0 and text == ",":
                arguments.append([])
                continue
            if tokens[i].kind is Kind.PUNCT and text in "([":
                depth += 1
            elif tokens[i].kind is Kind.PUNCT and text in ")]":
                depth -= 1
            arguments[-1].append(i)
        wanted = _ENGINE_DATABASE_ARGUMENT[engine]
        if wanted >= len(arguments) or len(arguments[wanted]) != 1:
            continue
        i = arguments[wanted][0]
        token = tokens[i]
        if token.kind is Kind.STRING:
            value = _unescape(token.text[1:-1])
            if engine == "Dictionary":
                database, dot, rest = value.partition(".")
                if dot and database in mapping:
                    tokens[i] = Token(Kind.STRING, quote_string(f"{mapping[database]}.{rest}"))
            elif value in mapping:
                tokens[i] = Token(Kind.STRING, quote_string(mapping[value]))
        elif engine == "Dictionary":
            pass  # a lone identifier names the dictionary: 18.16's have no database
        elif (name := token.identifier) is not None and name in mapping:
            tokens[i] = Token(Kind.QUOTED, quote_identifier(mapping[name]))
    return "".join(t.text for t in tokens)
