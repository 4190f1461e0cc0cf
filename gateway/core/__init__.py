"""The pure core: config, errors, routing, rollout decisions, inference records, statistics."""
