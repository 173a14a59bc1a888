"""Read a TOML configuration file: every failure is one ConfigError, naming the file by role only."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from common.errors import ConfigError


def read_toml(path: Path, *, what: str, show_path: bool = False) -> dict[str, Any]:
    """Parse ``path``; ``what`` names the file in messages ("the site config", "server config").

    ``show_path`` adds the path to messages: for the operator's own files on the server,
    never for a site's (its paths can name a patient's folder).
    """
    name = f"{what} {path}" if show_path else what
    try:
        return tomllib.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{name} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{name} cannot be read ({type(e).__name__})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name} is not valid TOML: {e}") from None
