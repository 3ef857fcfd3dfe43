"""API keys: SHA-256 digests with a role, loaded from a TOML/JSON file or ``RECSYS_API_KEYS``.

Only digests are stored; a request's key is hashed and looked up. Roles and what they may do:

==============  =========================================================
app             picks, similar products, model info
merchandiser    audiences and their export, picks, model info
admin           everything, including live events and model reload
==============  =========================================================

A keys file looks like::

    [[keys]]
    id = "pos-app"            # public name: logs and the audit trail carry it, never the secret
    role = "app"
    sha256 = "5e884898..."    # python -m serving.keys hash <secret>

Command line::

    python -m serving.keys hash <secret>    # the digest to put in the file
    python -m serving.keys new <id> <role>  # a fresh random secret and its keys-file entry

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

Permission = Literal["picks", "similar", "audiences", "model", "events", "reload"]

PERMISSIONS: dict[Role, frozenset[Permission]] = {
    "app": frozenset({"picks", "similar", "model"}),
    "merchandiser": frozenset({"audiences", "picks", "model"}),
    "admin": frozenset({"picks", "similar", "audiences", "model", "events", "reload"}),
}


def hash_key(secret: str) -> str:
    """The SHA-256 hex digest stored for ``secret``."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's public id and role."""

    key_id: str
    role: Role

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]


class KeyStore:
    """Digest -> principal lookup.

    Examples
    --------
    >>> store = KeyStore([ApiKeySpec(id="a", role="app", sha256=hash_key("x"))])
    >>> store.authenticate("x")
    Principal(key_id='a', role='app')
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
            self._by_digest[key.sha256] = Principal(key.id, key.role)

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
            f"API keys file {path}: each entry needs id, role (app|merchandiser|admin) and a 64-hex "
            f"sha256 digest ({exc.error_count()} problem(s): {exc.errors()[0]['msg']})"
        ) from None


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
    """``hash <secret>`` prints a digest; ``new <id> <role>`` prints a new secret and its entry."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "hash":
        print(hash_key(args[1]))
        return 0
    if len(args) == 3 and args[0] == "new" and args[2] in PERMISSIONS:
        secret = secrets.token_urlsafe(32)
        print(f"# secret (give it to the client; it is not stored): {secret}")
        print(f'[[keys]]\nid = "{args[1]}"\nrole = "{args[2]}"\nsha256 = "{hash_key(secret)}"')
        return 0
    if len(args) == 2 and args[0] == "demo":
        return _demo_keys(Path(args[1]))
    print(
        "usage: python -m serving.keys hash <secret> | new <id> <app|merchandiser|admin> | demo <keys.toml>",
        file=sys.stderr,
    )
    return 2


def _demo_keys(path: Path) -> int:
    """One key per role for a local demo: the keys file holds digests only; the secrets go to a
    sibling ``.secrets`` file readable by the owner alone. An existing pair is kept."""
    secrets_path = path.with_suffix(".secrets")
    if not (path.exists() and secrets_path.exists()):
        path.parent.mkdir(parents=True, exist_ok=True)
        entries, lines = [], []
        for role in ("app", "merchandiser", "admin"):
            secret = secrets.token_urlsafe(24)
            entries.append(f'[[keys]]\nid = "demo-{role}"\nrole = "{role}"\nsha256 = "{hash_key(secret)}"\n')
            lines.append(f"{role:13s} {secret}")
        path.write_text("\n".join(entries))
        secrets_path.write_text("\n".join(lines) + "\n")
        secrets_path.chmod(0o600)
    print(f"demo API keys (X-API-Key header), from {secrets_path}:")
    print(secrets_path.read_text(), end="")
    return 0


if __name__ == "__main__":  # pragma: no cover - console entry
    raise SystemExit(main())
