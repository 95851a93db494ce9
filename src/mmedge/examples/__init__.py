"""Worked examples of bringing your own model (see the README); the test suite runs them."""
