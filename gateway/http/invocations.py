"""What the connection protocol and the app both know of an invocation: its paths and its id."""

import random
import re

# `POST /invocations`, `/endpoints/{name}/invocations` and Databricks' `/serving-endpoints/{name}/invocations`.
INVOCATIONS = re.compile(r"/(?:(?:serving-)?endpoints/(?P<name>[^/]+)/)?invocations")
MAX_REQUEST_ID = 128

# New request ids: 128 random bits as 32 hex digits, like uuid4().hex, without a system call and
# a UUID object per request. Unique, not secret; seeded from os.urandom in every worker process.
_IDS = random.Random()


def request_id(given: str | None) -> str:
    """The caller's `x-request-id` when it is a short printable ASCII string, else a new one."""
    if given and len(given) <= MAX_REQUEST_ID and given.isprintable() and given.isascii():
        return given
    return f"{_IDS.getrandbits(128):032x}"
