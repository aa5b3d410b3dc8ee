"""Where runs are stored: a MongoDB named by the environment, or the embedded server of the project.

The MongoDB URL is a secret (it may hold a password): it is read from the environment only, never written
to params, Sacred configs, the database or logs. Everything that prints or stores text passes it through
`redact` first.

    CLIPFLUX_MONGO_URL=mongodb://user:pw@host:27017/db   runs go to that MongoDB
    CLIPFLUX_MONGO_URL=off                               runs stay in `runs/` only (file observer)
    (unset)                                              the embedded server in `.clipflux/mongo/`
    CLIPFLUX_MONGO_DB=name                               database name (default: the URL's, else clipflux)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

URL_ENV = "CLIPFLUX_MONGO_URL"
DB_ENV = "CLIPFLUX_MONGO_DB"
DEFAULT_DB = "clipflux"
TIMEOUT_MS = 2000  # a store that does not answer within this is treated as down: training never waits on it


class StoreError(RuntimeError):
    """The runs database cannot be reached or is not configured (the message never holds credentials)."""


@dataclass(frozen=True)
class Store:
    """A MongoDB to record runs in.

    Attributes:
        url: the connection string (secret: never print it; `str(store)` is safe).
        db_name: the database holding `runs` and `metrics`.
        embedded: whether this is clipflux's own server in `.clipflux/mongo/`.
    """

    url: str
    db_name: str
    embedded: bool

    def __str__(self) -> str:
        return f"{redact(self.url)} (database {self.db_name}{', embedded' if self.embedded else ''})"

    __repr__ = __str__

    def client(self, timeout_ms: int = TIMEOUT_MS) -> Any:
        """A pymongo client with short timeouts, so a dead store fails fast instead of stalling a run."""
        import pymongo

        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                                   socketTimeoutMS=max(10 * timeout_ms, 20000), appname="clipflux")

    def database(self, timeout_ms: int = TIMEOUT_MS) -> Any:
        """The runs database (pymongo `Database`); the caller closes `db.client`."""
        return self.client(timeout_ms)[self.db_name]

    def url_with_database(self) -> str:
        """The URL with the database as its path (what Omniboard expects)."""
        head, sep, query = self.url.partition("?")
        scheme, rest = head.split("://", 1)
        hosts = rest.split("/", 1)[0]
        return f"{scheme}://{hosts}/{quote(self.db_name)}{sep}{query}"


def configured_url() -> str | None:
    """The URL set in the environment, None when unset; "off" when the user turned MongoDB off."""
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        return None
    if url.lower() in ("off", "none", "0", "false"):
        return "off"
    if not url.startswith(("mongodb://", "mongodb+srv://")):
        raise StoreError(f"{URL_ENV} must be a mongodb:// or mongodb+srv:// URL, or 'off' (got {redact(url)!r})")
    return url


def external_store(url: str) -> Store:
    """The store for a user-given URL: its database is CLIPFLUX_MONGO_DB, else the URL's path, else clipflux."""
    path = url.partition("?")[0].split("://", 1)[1]
    url_db = unquote(path.split("/", 1)[1]) if "/" in path else ""
    return Store(url, os.environ.get(DB_ENV) or url_db or DEFAULT_DB, embedded=False)


def embedded_store(port: int) -> Store:
    """The store of the embedded server listening on 127.0.0.1:`port`."""
    return Store(f"mongodb://127.0.0.1:{port}/", os.environ.get(DB_ENV) or DEFAULT_DB, embedded=True)


def secrets() -> list[str]:
    """The strings that must never be stored: the configured URL when it holds credentials or options (which
    may carry tokens), its user:password part and the password, also URL-decoded."""
    url = os.environ.get(URL_ENV, "").strip()
    if "://" not in url:
        return []
    netloc = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    found = {url} if "@" in netloc or "?" in url else set()
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        password = userinfo.partition(":")[2]
        found |= {userinfo, unquote(userinfo)} | ({password, unquote(password)} if password else set())
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


_USERINFO = re.compile(r"(mongodb(?:\+srv)?://)[^@/\s]+@")


def redact(text: str) -> str:
    """`text` with any MongoDB credentials replaced by `***` (the configured ones and any `user:pw@` in a URL)."""
    for secret in secrets():
        text = text.replace(secret, "***")
    return _USERINFO.sub(r"\1***@", text)


def project_root(start: str | Path | None = None) -> Path:
    """The project folder: DVC's DVC_ROOT when a stage runs, else the nearest folder up with a dvc.yaml."""
    if os.environ.get("DVC_ROOT") and start is None:
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists():
            return folder
    return here


def state_dir(root: Path) -> Path:
    """clipflux's git-ignored folder for local services: `<root>/.clipflux`."""
    return root / ".clipflux"
