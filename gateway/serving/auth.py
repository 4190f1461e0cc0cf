"""The bearer tokens of one process: read at start, re-read off the event loop when the file changes.

`TokenStore.requester` runs on the event loop for every request and only reads the current
`Tokens`, an immutable value; `TokenStore.follow` checks the file's identity (inode, size,
modification time) every second in a worker thread and swaps in a new `Tokens` when it changed
and is valid. A file that is missing or invalid keeps the tokens in use and logs a warning once
per change, naming lines, never a token: a file caught half-written is harmless. Replace the file
atomically (write another, then rename it over), as a Kubernetes secret volume does.
"""

import asyncio
import logging
import os

from gateway.core.config_file import ConfigError, load_tokens
from gateway.core.errors import GatewayError
from gateway.core.tokens import Tokens, bearer_token

logger = logging.getLogger(__name__)

RELOAD_SECONDS = 1.0

_Signature = tuple[int, int, int, int]  # device, inode, size, modification time (ns)


class TokenStore:
    """The tokens in use, and who a request's `Authorization` header says is calling."""

    def __init__(self, path: str, reload_seconds: float = RELOAD_SECONDS) -> None:
        """Read the tokens file; raise ConfigError when it cannot be used."""
        self.path = path
        self._reload_seconds = reload_seconds
        self._signature = _signature(path)
        self._tokens: Tokens = load_tokens(path)
        logger.info("auth: %d bearer token(s) from %s", len(self._tokens.entries), path)

    @property
    def tokens(self) -> Tokens:
        """The tokens in use."""
        return self._tokens

    def requester(self, authorization: str | None) -> str:
        """The name of the caller's token; raise a 401 GatewayError without one that is valid."""
        token = bearer_token(authorization)
        if token is None:
            raise GatewayError(
                "UNAUTHENTICATED", "This gateway needs an `Authorization: Bearer <token>` header."
            )
        name = self._tokens.match(token)
        if name is None:
            raise GatewayError("UNAUTHENTICATED", "The bearer token is not valid.")
        return name

    def reload(self) -> bool:
        """Re-read the file if it changed (blocking: run it off the loop); whether tokens changed."""
        signature = _signature(self.path)
        if signature == self._signature:
            return False
        self._signature = signature
        if signature is None:
            logger.warning("auth: cannot read %s; keeping the tokens in use", self.path)
            return False
        try:
            tokens = load_tokens(self.path)
        except ConfigError as exc:
            logger.warning(
                "auth: %s is invalid, keeping the tokens in use: %s",
                self.path,
                "; ".join(exc.problems),
            )
            return False
        self._tokens = tokens  # one reference swap: a request sees the old tokens or the new
        logger.info("auth: reloaded %d bearer token(s) from %s", len(tokens.entries), self.path)
        return True

    async def follow(self) -> None:
        """Reload the file whenever it changes, until cancelled."""
        while True:
            await asyncio.sleep(self._reload_seconds)
            try:
                await asyncio.to_thread(self.reload)
            except Exception:  # a bug here must not stop the checks, nor the tokens in use
                logger.exception("auth: checking %s failed; keeping the tokens in use", self.path)


def _signature(path: str) -> _Signature | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
