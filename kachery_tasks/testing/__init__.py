"""Test suites shipped with the package, for backends written elsewhere (needs pytest)."""
