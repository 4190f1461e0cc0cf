"""One logging configuration for the gateway's own loggers and uvicorn's, as text or JSON lines."""

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.observe.quiet import OncePerKind

LogFormat = Literal["text", "json"]


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record's fields, message and any exception, as JSON."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def logging_config(level: str = "INFO", log_format: LogFormat = "text") -> dict[str, Any]:
    """The dictConfig for `gateway.*` and `uvicorn.*`; access logs stay off unless asked for."""
    formatter = "json" if log_format == "json" else "text"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "text": {"format": "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"},
            "json": {"()": JsonFormatter},
        },
        "filters": {"once": {"()": OncePerKind}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": formatter,
                "stream": "ext://sys.stderr",
            },
            "warnings": {
                "class": "logging.StreamHandler",
                "formatter": formatter,
                "stream": "ext://sys.stderr",
                "filters": ["once"],
            },
        },
        "loggers": {
            "gateway": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            "mlflow": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            # Python warnings (a model library's, say), each distinct one logged once.
            "py.warnings": {"handlers": ["warnings"], "level": "WARNING", "propagate": False},
        },
    }


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Apply `logging_config` to this process, with Python warnings routed through it."""
    logging.config.dictConfig(logging_config(level, log_format))
    logging.captureWarnings(True)
