"""Rule tags a retailer defines: named conditions over a member's purchases, compiled to SQL.

A rules file (TOML) lists rules, each a tag of the registry (:mod:`recsys.tags`) that the
feature build computes with the built-in ones::

    [[rules]]
    name = "lapsed_60d"            # the tag's name: a column, a filter key (letters, digits, _)
    zh = "未购60天"                 # its labels
    en = "No purchase in 60 days"
    when = "days_since_last_purchase > 60"
    description = "bought before, but not in the last 60 days"   # optional

``when`` is an expression in a small language, parsed with Python's :mod:`ast` (``mode="eval"``)
and accepted only when every node is one of the constructs below -- nothing is ever evaluated
as Python. It is compiled to one SQL query over the feature build's views (``member_base``,
``lines``, ``products``) in the SQL DuckDB and Spark SQL share (the ``days_between`` shim of
:mod:`recsys.dialect` for dates), so both engines compute the same tag.

Everything is as of the snapshot date: "the last N days" are the N days before it (a purchase the
day before is 1 day ago).

=====================================  =====================================================
``days_since_last_purchase``           days since the member's last purchase (none if never)
``days_since_first_purchase``          days since their first purchase
``days_since_joined``                  days since they joined the programme (none if unknown)
``purchases(N)``                       purchase occasions (visits) in the last N days;
                                       ``purchases()``: all before the snapshot date
``spend(N)``                           what they paid in the last N days (``spend()``: ever)
``distinct_products(N)``               different products bought in the last N days
``bought_category("乳品", N)``          bought a product of the category in the last N days
``bought_brand("光明", N)``             ... of the brand
``bought_product("4710088620157", N)`` ... the product
``used_channel("app", N)``             bought through the channel in the last N days
``joined_within(N)``                   joined in the last N days
=====================================  =====================================================

The last argument (N, whole days >= 1) of the ``bought_*`` and ``used_channel`` functions may be
left out: ever, before the snapshot date. Conditions combine with ``and``, ``or``, ``not`` and
parentheses; numbers compare with ``<  <=  >  >=  ==  !=`` (chains such as ``2 <= purchases(30)
< 5`` too) and combine with ``+ - * /``. A comparison with a value the member does not have
(``days_since_last_purchase`` of a member who never bought) is false, so ``not`` of it is true:
``not (days_since_last_purchase <= 60)`` keeps members who never bought, ``days_since_last_purchase
> 60`` does not.

A rule is a yes/no tag (values ``true`` / ``false``; filter with ``{"lapsed_60d": ["true"]}``).
A malformed rule is an :class:`~recsys.errors.InputError` naming the rule and what is wrong; a
category, brand, product or channel a rule names that the data does not hold, and a rule that
matches nobody, are warnings in the snapshot's manifest (the build goes on).
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from recsys.errors import InputError
from recsys.tags import TagDef, values

RULE_KIND = "rule"
FLAG = values(("true", "是", "yes"), ("false", "否", "no"))
MAX_DAYS = 36_500
MAX_RULE_CHARS = 2_000

Type = Literal["num", "bool", "str"]

# variables: name -> SQL over the member_base row b
VARIABLES: dict[str, str] = {
    "days_since_last_purchase": "b.recency_days",
    "days_since_first_purchase": "b.tenure_days",
    "days_since_joined": "days_between(b.joined_at, ${as_of})",
}


@dataclass(frozen=True)
class _Func:
    kind: Literal["count", "bool", "joined"]
    value_arg: str | None  # what the text argument names (category, brand, product, channel), if any
    days_required: bool
    doc: str


FUNCTIONS: dict[str, _Func] = {
    "purchases": _Func("count", None, False, "purchases(N): purchase occasions in the last N days"),
    "spend": _Func("count", None, False, "spend(N): amount paid in the last N days"),
    "distinct_products": _Func("count", None, False, "distinct_products(N): products bought in the last N days"),
    "bought_category": _Func("bool", "category", False, 'bought_category("category", N)'),
    "bought_brand": _Func("bool", "brand", False, 'bought_brand("brand", N)'),
    "bought_product": _Func("bool", "product", False, 'bought_product("product id", N)'),
    "used_channel": _Func("bool", "channel", False, 'used_channel("channel", N)'),
    "joined_within": _Func("joined", None, True, "joined_within(N): joined in the last N days"),
}

# where each text argument is looked for when the build checks that it exists
_REFERENCE_SQL = {
    "category": "SELECT COUNT(*) FROM products WHERE category = {v}",
    "brand": "SELECT COUNT(*) FROM products WHERE brand = {v}",
    "product": "SELECT COUNT(*) FROM products WHERE product_id = {v}",
    "channel": "SELECT COUNT(*) FROM lines WHERE channel = {v}",
}

_COMPARE = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "=", ast.NotEq: "<>"}
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_KEYS = {"name", "zh", "en", "when", "description"}


class RuleError(ValueError):
    """What is wrong with one rule's expression (the caller adds the rule's name)."""


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal that DuckDB and Spark SQL read the same way.

    The engines disagree on ``''`` (DuckDB: a quote; Spark: two adjacent literals, concatenated)
    and on backslashes (Spark: an escape), so both are spelt with ``chr()``; ``$`` is doubled
    for the feature build's ``${name}`` substitution."""
    parts = re.split(r"(['\\])", text)
    out = []
    for part in parts:
        if part == "'":
            out.append("chr(39)")
        elif part == "\\":
            out.append("chr(92)")
        elif part:
            out.append("'" + part.replace("$", "$$") + "'")
    if not out:
        return "''"
    return out[0] if len(out) == 1 else "(" + " || ".join(out) + ")"


@dataclass
class _Compiler:
    """One rule's expression -> SQL: the condition over ``b`` (member_base) and ``r`` (the rule's
    per-member aggregates of ``lines``)."""

    aggregates: list[str] = field(default_factory=list)
    references: list[tuple[str, str]] = field(default_factory=list)
    needs_brand: bool = False

    def aggregate(self, sql: str) -> str:
        if sql not in self.aggregates:
            self.aggregates.append(sql)
        return f"r.a{self.aggregates.index(sql)}"

    def compile(self, node: ast.AST) -> tuple[str, Type]:
        if isinstance(node, ast.BoolOp):
            op = "AND" if isinstance(node.op, ast.And) else "OR"
            parts = [self.condition(v, op.lower()) for v in node.values]
            return "(" + f" {op} ".join(parts) + ")", "bool"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return f"(NOT {self.condition(node.operand, 'not')})", "bool"
            if isinstance(node.op, ast.USub):
                return f"(-{self.number(node.operand, 'a minus sign')})", "num"
            raise RuleError(f"{_show(node)}: the operator is not part of the rule language")
        if isinstance(node, ast.Compare):
            parts = []
            left = self.number(node.left, "a comparison")
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                sym = _COMPARE.get(type(op))
                if sym is None:
                    raise RuleError(f"{_show(node)}: compare with < <= > >= == != only")
                right = self.number(right_node, "a comparison")
                parts.append(f"COALESCE({left} {sym} {right}, FALSE)")
                left = right
            return ("(" + " AND ".join(parts) + ")") if len(parts) > 1 else parts[0], "bool"
        if isinstance(node, ast.BinOp):
            sym = _ARITH.get(type(node.op))
            if sym is None:
                raise RuleError(f"{_show(node)}: arithmetic is + - * / only")
            a, b = self.number(node.left, "arithmetic"), self.number(node.right, "arithmetic")
            if sym == "/":
                return f"(CAST({a} AS DOUBLE) / NULLIF({b}, 0))", "num"
            return f"({a} {sym} {b})", "num"
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool):
                return ("TRUE" if v else "FALSE"), "bool"
            if isinstance(v, int):
                return str(v), "num"
            if isinstance(v, float):
                return f"{v!r}E0" if "e" not in repr(v) else repr(v), "num"
            if isinstance(v, str):
                return sql_string(v), "str"
            raise RuleError(f"{_show(node)}: not a number, text or true/false")
        if isinstance(node, ast.Name):
            if node.id in VARIABLES:
                return VARIABLES[node.id], "num"
            if node.id in FUNCTIONS:
                raise RuleError(f"{node.id} is a function: call it, e.g. {FUNCTIONS[node.id].doc}")
            if node.id in ("true", "false"):
                return node.id.upper(), "bool"
            raise RuleError(f"unknown name {node.id!r}; variables: {', '.join(VARIABLES)}; "
                            f"functions: {', '.join(FUNCTIONS)}")
        if isinstance(node, ast.Call):
            return self.call(node)
        raise RuleError(f"{_show(node)}: {type(node).__name__.lower()} is not part of the rule language "
                        "(conditions, comparisons, + - * /, numbers, text and the listed functions)")

    def condition(self, node: ast.AST, where: str) -> str:
        sql, kind = self.compile(node)
        if kind != "bool":
            raise RuleError(f"{_show(node)}: {where} needs a condition (e.g. a comparison), not a {_name(kind)}")
        return sql

    def number(self, node: ast.AST, where: str) -> str:
        sql, kind = self.compile(node)
        if kind != "num":
            raise RuleError(f"{_show(node)}: {where} needs a number, not a {_name(kind)}")
        return sql

    def call(self, node: ast.Call) -> tuple[str, Type]:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else _show(node.func)
            raise RuleError(f"unknown function {name!r}; functions: {', '.join(FUNCTIONS)}")
        name, spec = node.func.id, FUNCTIONS[node.func.id]
        if node.keywords:
            raise RuleError(f"{name}(): give arguments by position, e.g. {spec.doc}")
        args = list(node.args)
        value = None
        if spec.value_arg is not None:
            if not args or not (isinstance(args[0], ast.Constant) and isinstance(args[0].value, str)):
                raise RuleError(f"{name}() needs the {spec.value_arg} as text first, e.g. {spec.doc}")
            value = args.pop(0).value
            if not value or len(value) > 200 or any(ord(ch) < 32 for ch in value):
                raise RuleError(f"{name}(): the {spec.value_arg} must be 1-200 printable characters")
        if len(args) > 1 or (spec.days_required and not args):
            raise RuleError(f"{name}() takes {'the' if spec.days_required else 'at most one'} number of days; "
                            f"e.g. {spec.doc}")
        days = None
        if args:
            arg = args[0]
            if not (isinstance(arg, ast.Constant) and type(arg.value) is int and 1 <= arg.value <= MAX_DAYS):
                raise RuleError(f"{name}(): the number of days must be a whole number from 1 to {MAX_DAYS}, "
                                f"not {_show(arg)}")
            days = int(arg.value)
        window = f"days_between(l.ts, ${{as_of}}) <= {days}" if days is not None else "TRUE"
        if spec.kind == "joined":
            return f"COALESCE(days_between(b.joined_at, ${{as_of}}) BETWEEN 1 AND {days}, FALSE)", "bool"
        if spec.kind == "count":
            what = {"purchases": "COUNT(DISTINCT CASE WHEN {w} THEN l.occasion_id END)",
                    "spend": "SUM(CASE WHEN {w} THEN l.amount ELSE 0 END)",
                    "distinct_products": "COUNT(DISTINCT CASE WHEN {w} THEN l.product_id END)"}[name]
            return f"COALESCE({self.aggregate(what.format(w=window))}, 0)", "num"
        assert value is not None and spec.value_arg is not None
        column = {"category": "l.category", "brand": "p.brand", "product": "l.product_id",
                  "channel": "l.channel"}[spec.value_arg]
        self.needs_brand |= spec.value_arg == "brand"
        if (spec.value_arg, value) not in self.references:
            self.references.append((spec.value_arg, value))
        agg = self.aggregate(f"MAX(CASE WHEN {window} AND {column} = {sql_string(value)} THEN 1 ELSE 0 END)")
        return f"(COALESCE({agg}, 0) = 1)", "bool"

    def query(self, condition: str) -> str:
        sql = "SELECT b.member_id, TRUE AS value FROM member_base AS b"
        if self.aggregates:
            cols = ", ".join(f"{a} AS a{i}" for i, a in enumerate(self.aggregates))
            brand = " LEFT JOIN products AS p ON p.product_id = l.product_id" if self.needs_brand else ""
            sql += (f" LEFT JOIN (SELECT l.member_id, {cols} FROM lines AS l{brand} GROUP BY l.member_id) AS r"
                    " ON r.member_id = b.member_id")
        return f"{sql} WHERE {condition}"


def _name(kind: Type) -> str:
    return {"num": "number", "bool": "condition", "str": "text"}[kind]


def _show(node: ast.AST) -> str:
    try:
        text = ast.unparse(node)
    except Exception:  # noqa: BLE001 - only for messages
        text = type(node).__name__
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Rule:
    """One compiled rule: its tag (a registry entry) and the data values it names."""

    tag: TagDef
    when: str
    references: tuple[tuple[str, str], ...]


def compile_rule(name: str, zh: str, en: str, when: str, description: str = "", source: str = "rules") -> Rule:
    """One rule as a registry tag; :class:`InputError` naming the rule and what is wrong.

    Examples
    --------
    >>> r = compile_rule("big_90d", "近90天消费超1000元", "Spent over 1,000 in 90 days", "spend(90) > 1000")
    >>> r.tag.kind, r.tag.default, r.tag.value_names
    ('rule', 'false', ('true', 'false'))
    """
    where = f"rule {name!r} ({source})"
    if not isinstance(when, str) or not when.strip():
        raise InputError(f"{where}: `when` must be a non-empty expression, e.g. when = \"purchases(30) >= 2\"")
    if len(when) > MAX_RULE_CHARS:
        raise InputError(f"{where}: `when` is {len(when)} characters; at most {MAX_RULE_CHARS}")
    try:
        tree = ast.parse(" ".join(when.split()), mode="eval")
    except SyntaxError as exc:
        raise InputError(f"{where}: `when` does not parse at column {exc.offset}: {exc.msg} "
                         f"(in {when!r})") from None
    comp = _Compiler()
    try:
        condition = comp.condition(tree.body, "a rule")
    except RuleError as exc:
        raise InputError(f"{where}: {exc}") from None
    except RecursionError:
        raise InputError(f"{where}: the expression is nested too deeply") from None
    try:
        tag = TagDef(name=name, entity="member", zh=zh, en=en, values=FLAG, query=comp.query(condition),
                     default="false", kind=RULE_KIND, source=source, description=description or f"when {when}")
    except ValidationError as exc:
        raise InputError(f"{where}: {exc.errors()[0]['msg']}") from None
    return Rule(tag=tag, when=when, references=tuple(comp.references))


@dataclass(frozen=True)
class RuleSet:
    """The rules of one file, in file order."""

    rules: tuple[Rule, ...]
    source: str

    @property
    def tags(self) -> tuple[TagDef, ...]:
        return tuple(r.tag for r in self.rules)

    def checks(self) -> list[tuple[str, str]]:
        """``(warning, SQL count)`` pairs for the build: each warning applies when its count is 0
        (a category, brand, product or channel a rule names that the data does not hold)."""
        out = []
        for rule in self.rules:
            for kind, value in rule.references:
                out.append((f"rule {rule.tag.name!r} ({self.source}): {kind} {value!r} is not in the data; "
                            "the rule treats it as never bought", _REFERENCE_SQL[kind].format(v=sql_string(value))))
        return out


def parse_rules(doc: Any, source: str) -> RuleSet:
    """Rules from a parsed TOML document ``{"rules": [{name, zh, en, when, description?}, ...]}``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list) or not doc["rules"]:
        raise InputError(f"{source}: expected one or more [[rules]] tables, each with name, zh, en and when")
    extra = sorted(set(doc) - {"rules"})
    if extra:
        raise InputError(f"{source}: unknown top-level key(s) {', '.join(extra)}; only [[rules]] tables")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc["rules"]):
        if not isinstance(entry, dict):
            raise InputError(f"{source}: rules[{i}] is not a table")
        name = entry.get("name")
        where = f"rule {name!r} ({source})" if isinstance(name, str) else f"{source}: rules[{i}]"
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; a rule has {', '.join(sorted(_KEYS))}")
        missing = [k for k in ("name", "zh", "en", "when") if not isinstance(entry.get(k), str) or not entry[k].strip()]
        if missing:
            raise InputError(f"{where}: needs {', '.join(missing)} (text)")
        if name in seen:
            raise InputError(f"{where}: defined twice in the file")
        seen.add(name)
        description = entry.get("description", "")
        if not isinstance(description, str):
            raise InputError(f"{where}: description must be text")
        rules.append(compile_rule(name, entry["zh"], entry["en"], entry["when"], description, source))
    return RuleSet(tuple(rules), source)


def load_rules(path: Path) -> RuleSet:
    """The rules file at ``path`` (TOML); :class:`InputError` for a missing or malformed file or rule."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"rules file {path} not found")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"rules file {path} is not valid TOML: {exc}") from None
    return parse_rules(doc, path.name)
