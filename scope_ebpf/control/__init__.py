"""What the kernel keeps: matchers' verdicts, 1-in-k sampling plans, the
circuit breaker, per-selector budgets and the exact per-function aggregates."""
