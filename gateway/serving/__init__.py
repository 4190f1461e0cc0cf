"""The serving runtime: registry, model pool, batching, shadow traffic and the invocation service."""
