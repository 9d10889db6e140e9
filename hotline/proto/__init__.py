"""The sans-IO protocol core.

Nothing in this package opens a socket, touches a file, reads a clock or starts a
thread: bytes, ``now`` and randomness come in as arguments; bytes, events and
deadlines go out. ``tests/proto/test_purity.py`` enforces the import rule.
"""
