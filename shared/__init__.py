"""Code both services use: settings, logging, storage, gRPC plumbing.

It imports neither service (checked by tests/unit/test_layering.py).
"""
