"""hotline: a secure, always-on line between two parties.

Two symmetric daemons keep a Noise KK link over a primary (TCP) and a hot-standby
(UDP) path; every message is an Ed25519-signed (SSHSIG), hash-chained, sequenced
envelope, stored durably, delivered exactly once in order and acknowledged with
signed receipts. See README.md and DESIGN.md.
"""

from __future__ import annotations

__version__ = "0.1.0"
