"""Where AccessKey pairs come from.

Order: ``OPENIMM_ACCESS_KEYS`` if set; else, unless ``OPENIMM_DEV_MODE`` is set explicitly, a
key pair generated on first start into ``$OPENIMM_DATA_DIR/access_keys`` (mode 0600). So the
embedded default is authenticated out of the box, and the CLI on the same machine signs its
requests with that file, like a local admin credential.

Open mode (unsigned requests accepted as owner ``dev``) is only ever the explicit
``OPENIMM_DEV_MODE``: an existing key file that is empty, unreadable or malformed is a
``ConfigurationError`` (the server refuses to start), never "no authentication".
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings

KEYS_FILE = "access_keys"


def keys_path(settings: Settings) -> Path:
    return settings.resolved_data_dir / KEYS_FILE


def load_keys(settings: Settings, *, create: bool = True) -> dict[str, str]:
    """The AccessKey pairs the server accepts (empty only in dev mode without keys, or when
    ``create`` is False and no key file exists yet). Raises ``ConfigurationError`` for a
    malformed ``OPENIMM_ACCESS_KEYS`` or an empty/malformed key file."""
    try:
        configured = settings.parsed_access_keys()
    except ValueError as exc:
        raise ConfigurationError(f"OPENIMM_ACCESS_KEYS is malformed: {exc}") from None
    if configured or settings.dev_mode:
        return configured
    path = keys_path(settings)
    if not path.exists() and create:
        _generate(path)
    if not path.exists():
        return {}
    return _read(path)


def _read(path: Path) -> dict[str, str]:
    hint = "fix it, delete it (a new pair is generated) or set OPENIMM_ACCESS_KEYS"
    try:
        keys = Settings(access_keys=path.read_text().strip()).parsed_access_keys()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigurationError(f"The key file {path} is unusable ({exc}): {hint}.") from None
    if not keys:
        raise ConfigurationError(f"The key file {path} holds no AccessKey pair: {hint}.")
    return keys


def _generate(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    key_id = "LTAI" + secrets.token_hex(8)
    secret = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{key_id}:{secret}\n")


def client_key(settings: Settings) -> tuple[str, str] | None:
    """The pair a local client (CLI, demo) signs with; None in keyless dev mode."""
    keys = load_keys(settings)
    if not keys:
        return None
    key_id = next(iter(keys))
    return key_id, keys[key_id]
