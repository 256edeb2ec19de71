"""Benchmark protocols built on the ranking pass (Revisited Oxford / Paris)."""
