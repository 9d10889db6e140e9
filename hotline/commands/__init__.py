"""One module per CLI command, each with ``run(args) -> int``; imported lazily by cli.py."""
