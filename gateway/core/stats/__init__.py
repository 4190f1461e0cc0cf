"""Pure statistics for comparing variants: split health, comparisons, sequential tests, verdicts."""
