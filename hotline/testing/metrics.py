"""Scraping a daemon's ``/metrics`` in tests: real HTTP, ``prometheus_client``'s parser.

``scrape_metrics((host, port))`` GETs ``/metrics`` (blocking: call it on a worker
thread from trio) and returns the content type and every sample as
``{(name, ((label, value), …)): value}``; ``sample(samples, name, **labels)`` looks
one up. Counter samples carry their exposed names (``hotline_alerts_total``).
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_metrics(address: tuple[str, int], timeout: float = 30.0) -> tuple[str, Samples]:
    """GET ``http://HOST:PORT/metrics``; (Content-Type, samples).

    Raises:
        urllib.error.URLError: nothing answers there.
    """
    host, port = address
    shown = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{shown}:{port}/metrics", timeout=timeout) as reply:
        content_type, text = str(reply.headers["Content-Type"]), reply.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    return content_type, samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of sample ``name{labels}``; KeyError if it is not there."""
    return samples[(name, tuple(sorted(labels.items())))]
