"""Test tooling shipped with hotline: what the test suite, ``hotline demo`` and
``hotline bench`` use to run real daemons on loopback and to break the network
between them. Nothing in the daemon or the client commands imports this package.
"""
