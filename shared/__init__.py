"""Code both services use: settings, logging, storage, gRPC plumbing.

It imports neither service nor the CLI (import-linter contracts in pyproject.toml).
"""
