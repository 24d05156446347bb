"""Development tooling: local stacks for `make run`, the tests and the benchmark.

Not part of the installed package.
"""
