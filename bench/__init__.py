"""Load-test harness and engine micro-benchmarks; nothing outside bench/ may import it."""
