"""Test tooling shipped with hotline: what the test suite, ``hotline demo`` and
``hotline bench`` use to run real daemons on loopback and to break the network
between them. The daemon and the client commands never import it; only ``hotline demo``
and ``hotline bench`` do (through hotline/demo.py and hotline/bench.py).
"""
