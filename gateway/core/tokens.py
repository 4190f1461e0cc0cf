"""Bearer tokens: parse and validate a tokens file, and match a presented token (pure).

The file has one `name:token` a line; `#` comments and blank lines are allowed. Names are unique,
tokens are unique, visible ASCII and at least `MIN_TOKEN_LENGTH` characters. A problem is reported
by its line number and never quotes the line, which may hold a token.

Matching: the presented token is hashed once with SHA-256 and its digest compared with
`hmac.compare_digest` against the digest of every token, without stopping at a match. Hashing
first makes every comparison the same 32 bytes, so neither the length of a token nor how much of
one a guess got right shows in the time taken; comparing against all of them hides which one
matched. A dict from token to name would answer in time that depends on the token, and a dict
from digest to name, though sound, saves nothing worth having over a loop of a few dozen 32-byte
comparisons (well under a microsecond each). Only the digests are kept, never the tokens.
"""

import hashlib
import hmac
import re
from dataclasses import dataclass

MIN_TOKEN_LENGTH = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")
_TOKEN = re.compile(r"[\x21-\x7e]+")


class TokenFileError(ValueError):
    """A tokens file that cannot be used; `problems` names each bad line by its number."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True, slots=True)
class Tokens:
    """The names and SHA-256 digests of the valid tokens, in file order."""

    entries: tuple[tuple[bytes, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The tokens' names, in file order."""
        return tuple(name for _, name in self.entries)

    def match(self, token: str) -> str | None:
        """The name of `token`, or None; in time that does not depend on which token matched."""
        digest = _digest(token.encode("latin-1", "replace"))
        found = None
        for known, name in self.entries:
            if hmac.compare_digest(known, digest):
                found = name
        return found


def parse_tokens(text: str) -> Tokens:
    """The tokens of a file's text; raise TokenFileError naming each bad line."""
    problems: list[str] = []
    entries: list[tuple[bytes, str]] = []
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, token = (part.strip() for part in line.partition(":"))
        problem = _shape_problem(name if colon else "", token)
        if problem is not None:
            problems.append(f"line {number}: {problem}")
            continue
        if name in names:
            problems.append(f"line {number}: the name `{name}` is already on line {names[name]}")
            continue
        digest = _digest(token.encode("ascii"))
        if digest in digests:
            problems.append(f"line {number}: the same token as line {digests[digest]}")
            continue
        names[name] = number
        digests[digest] = number
        entries.append((digest, name))
    if not entries and not problems:
        problems.append("no tokens: give at least one `name:token` line")
    if problems:
        raise TokenFileError(problems)
    return Tokens(tuple(entries))


def _shape_problem(name: str, token: str) -> str | None:
    """What is wrong with one line's name and token, in words that never quote the token."""
    if not name or not token:
        return "expected `name:token`"
    if _NAME.fullmatch(name) is None:
        return (
            "the name must start with a letter or digit and hold only "
            "letters, digits, `.`, `_`, `@` or `-`"
        )
    if _TOKEN.fullmatch(token) is None:
        return "the token must be visible ASCII, without spaces"
    if len(token) < MIN_TOKEN_LENGTH:
        return f"the token must have at least {MIN_TOKEN_LENGTH} characters"
    return None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None (any other scheme)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()
