"""The one error that stops a run: a server did not start, crashed or answered differently."""


class BenchmarkError(Exception):
    """The benchmark cannot go on: a server did not start, crashed or answered differently."""
