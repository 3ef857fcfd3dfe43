"""API keys: SHA-256 digests with a role, loaded from a TOML/JSON file or ``RECSYS_API_KEYS``.

Only digests are stored; a request's key is hashed and looked up. Roles and what they may do:

==============  =========================================================
app             picks, similar products, member profiles, model info
staff           picks, similar products and member profiles, within the key's scope (导购)
merchandiser    audiences and their export, campaigns, picks, member profiles, model info
admin           everything, including live events and model reload
==============  =========================================================

A key may carry a **scope**: member tag values (any member tag of the served bundle -- a store, a
region, ...). Every member list, profile and pick the key gets is then limited, on the server, to
members who hold one of the values of each scope tag: a member outside it (or unknown, or only
known from live events, whose tags are not computed yet) is a 404 exactly like an unknown member,
an audience is drawn from the members in scope, and the audit trail records the scope. A staff
key must have a scope; the other roles may.

A keys file looks like::

    [[keys]]
    id = "pos-app"            # public name: logs and the audit trail carry it, never the secret
    role = "app"
    sha256 = "5e884898..."    # python -m serving.keys hash <secret>

    [[keys]]
    id = "store-s01"
    role = "staff"
    sha256 = "9f86d081..."
    scope = { store = ["S01"] }   # members whose home store is S01

Command line::

    python -m serving.keys hash <secret>                 # the digest to put in the file
    python -m serving.keys new <id> <role> [tag=v1,v2]   # a fresh random secret and its entry

Examples
--------
>>> hash_key("s3cret")[:12]
'1ec1c26b50d5'
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import TypeAdapter, ValidationError

from recsys.errors import InputError
from serving.settings import ApiKeySpec, Role

Permission = Literal["picks", "similar", "audiences", "campaigns", "model", "events", "reload"]

PERMISSIONS: dict[Role, frozenset[Permission]] = {
    "app": frozenset({"picks", "similar", "model"}),
    "staff": frozenset({"picks", "similar"}),
    "merchandiser": frozenset({"audiences", "campaigns", "picks", "model"}),
    "admin": frozenset({"picks", "similar", "audiences", "campaigns", "model", "events", "reload"}),
}
# a key's scope as a hashable value: ((tag, (value, ...)), ...) in the key's order
Scope = tuple[tuple[str, tuple[str, ...]], ...]


def hash_key(secret: str) -> str:
    """The SHA-256 hex digest stored for ``secret``."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's public id, role and scope (None: every member)."""

    key_id: str
    role: Role
    scope: Scope | None = None

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]

    def scope_dict(self) -> dict[str, list[str]] | None:
        """The scope as JSON (what whoami shows and audit lines record)."""
        return None if self.scope is None else {tag: list(values) for tag, values in self.scope}


def scope_of(spec: ApiKeySpec) -> Scope | None:
    if not spec.scope:
        return None
    return tuple((tag, tuple(dict.fromkeys(values))) for tag, values in spec.scope.items())


class KeyStore:
    """Digest -> principal lookup.

    Examples
    --------
    >>> store = KeyStore([ApiKeySpec(id="a", role="app", sha256=hash_key("x"))])
    >>> store.authenticate("x")
    Principal(key_id='a', role='app', scope=None)
    >>> store.authenticate("y") is None
    True
    """

    def __init__(self, keys: Iterable[ApiKeySpec]):
        self._by_digest: dict[str, Principal] = {}
        ids: set[str] = set()
        for key in keys:
            if key.id in ids:
                raise InputError(f"API key id {key.id!r} is listed twice; ids must be unique")
            ids.add(key.id)
            self._by_digest[key.sha256] = Principal(key.id, key.role, scope_of(key))

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, secret: str) -> Principal | None:
        """The principal of ``secret``, or None when it is not a known key."""
        return self._by_digest.get(hash_key(secret))


_KEY_LIST = TypeAdapter(list[ApiKeySpec])


def read_keys_file(path: Path) -> list[ApiKeySpec]:
    """Keys from a ``.toml`` or ``.json`` file holding ``keys = [{id, role, sha256}, ...]``."""
    if not path.exists():
        raise InputError(f"API keys file {path} does not exist; create it or unset RECSYS_API_KEYS_FILE")
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"API keys file {path} cannot be parsed ({exc})") from None
    entries = doc.get("keys") if isinstance(doc, dict) else doc
    try:
        return _KEY_LIST.validate_python(entries)
    except ValidationError as exc:
        raise InputError(
            f"API keys file {path}: each entry needs id, role (app|staff|merchandiser|admin), a 64-hex "
            f"sha256 digest and, for staff, a scope ({exc.error_count()} problem(s): {_first(exc)})"
        ) from None


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def load_key_store(keys: list[ApiKeySpec] | None, keys_file: Path | None) -> KeyStore:
    """The keys from the settings (env list and/or file), or :class:`InputError` when there are none."""
    specs = list(keys or [])
    if keys_file is not None:
        specs += read_keys_file(keys_file)
    if not specs:
        raise InputError(
            "no API keys configured: set RECSYS_API_KEYS_FILE or RECSYS_API_KEYS "
            "(or RECSYS_AUTH_DISABLED=true for local development only)"
        )
    return KeyStore(specs)


def main(argv: list[str] | None = None) -> int:
    """``hash <secret>`` prints a digest; ``new <id> <role> [tag=v1,v2 ...]`` prints a new secret
    and its entry (with a scope when tag values are given)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "hash":
        print(hash_key(args[1]))
        return 0
    if len(args) >= 3 and args[0] == "new" and args[2] in PERMISSIONS:
        scope = _scope_args(args[3:])
        if scope is None:
            return 2
        secret = secrets.token_urlsafe(32)
        try:
            spec = ApiKeySpec(id=args[1], role=args[2], sha256=hash_key(secret), scope=scope or None)  # type: ignore[arg-type]
        except ValidationError as exc:
            print(f"error: {_first(exc)}", file=sys.stderr)
            return 2
        print(f"# secret (give it to the client; it is not stored): {secret}")
        print(f"[[keys]]\nid = {json.dumps(spec.id, ensure_ascii=False)}\nrole = \"{spec.role}\"\n"
              f"sha256 = \"{spec.sha256}\"")
        if spec.scope:
            inner = ", ".join(f"{json.dumps(t, ensure_ascii=False)} = {json.dumps(v, ensure_ascii=False)}"
                              for t, v in spec.scope.items())
            print(f"scope = {{ {inner} }}")
        return 0
    if len(args) >= 2 and args[0] == "demo":
        scope = _scope_args(args[2:])
        return 2 if scope is None else _demo_keys(Path(args[1]), scope)
    print(
        "usage: python -m serving.keys hash <secret> | new <id> <app|staff|merchandiser|admin> [tag=v1,v2 ...] "
        "| demo <keys.toml> [tag=v1,v2 ...]",
        file=sys.stderr,
    )
    return 2


def _scope_args(items: list[str]) -> dict[str, list[str]] | None:
    """``["store=S01", "region=a,b"]`` as a scope; None (after saying why) when malformed."""
    scope: dict[str, list[str]] = {}
    for item in items:
        tag, sep, values = item.partition("=")
        if not sep or not tag or not values:
            print(f"scope {item!r}: write tag=value or tag=v1,v2 (e.g. store=S01)", file=sys.stderr)
            return None
        scope.setdefault(tag, []).extend(v for v in values.split(",") if v)
    return scope


def _demo_keys(path: Path, staff_scope: dict[str, list[str]] | None = None) -> int:
    """One key per role for a local demo (a staff key too when ``staff_scope`` names its members):
    the keys file holds digests only; the secrets go to a sibling ``.secrets`` file readable by the
    owner alone. An existing pair is kept."""
    secrets_path = path.with_suffix(".secrets")
    if not (path.exists() and secrets_path.exists()):
        path.parent.mkdir(parents=True, exist_ok=True)
        entries, lines = [], []
        roles: list[Role] = ["app", "merchandiser", "admin", *(["staff"] if staff_scope else [])]  # type: ignore[list-item]
        for role in roles:
            secret = secrets.token_urlsafe(24)
            entry = f'[[keys]]\nid = "demo-{role}"\nrole = "{role}"\nsha256 = "{hash_key(secret)}"\n'
            if role == "staff" and staff_scope:
                inner = ", ".join(f"{json.dumps(t, ensure_ascii=False)} = {json.dumps(v, ensure_ascii=False)}"
                                  for t, v in staff_scope.items())
                entry += f"scope = {{ {inner} }}\n"
            entries.append(entry)
            lines.append(f"{role:13s} {secret}" + (f"   (scope {json.dumps(staff_scope, ensure_ascii=False)})"
                                                   if role == "staff" else ""))
        path.write_text("\n".join(entries))
        secrets_path.write_text("\n".join(lines) + "\n")
        secrets_path.chmod(0o600)
    print(f"demo API keys (X-API-Key header), from {secrets_path}:")
    print(secrets_path.read_text(), end="")
    return 0


if __name__ == "__main__":  # pragma: no cover - console entry
    raise SystemExit(main())
