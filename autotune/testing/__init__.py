"""Test helpers shipped with the package (conformance suites for extensions)."""
