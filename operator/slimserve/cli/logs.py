"""Log format of the slimserve commands: text for people, or JSON for log pipelines.

JSON is one object per line, {"time", "level", "logger", "message"} (plus "exc_info" with a traceback), written
by python-json-logger. Pods get the format from SLIMSERVE_LOG_FORMAT, which the operator sets from its
configuration; a command's --log-format flag wins over it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from slimserve.api.workload import DEFAULTS, LOG_FORMAT, EnvError, parse_log_format

ENV_LOG_FORMAT = LOG_FORMAT.name
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_format(text: str) -> str:
    """Parse a log format name ("text" or "json", any case)."""
    return parse_log_format(text)


def log_format_from_env(command: str, environ: Mapping[str, str] | None = None) -> str:
    """The format $SLIMSERVE_LOG_FORMAT names, "text" when unset; a wrong value ends the command with its name."""
    try:
        return LOG_FORMAT.read(os.environ if environ is None else environ) or DEFAULTS.log_format
    except EnvError as error:
        raise SystemExit(f"slimserve {command}: environment variable {error}") from None


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "{levelname}{name}{message}", style="{", timestamp="time",
        rename_fields={"levelname": "level", "name": "logger"},
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's copy of the message with ANSI colours
    )


def configure_logging(level: int | str, format_name: str, *, text_format: str = TEXT_FORMAT) -> None:
    """Root logging to stderr in `format_name`; every logger that propagates (uvicorn's too) writes through it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if format_name == "json" else logging.Formatter(text_format))
    logging.basicConfig(level=level, handlers=[handler])
