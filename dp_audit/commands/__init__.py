"""One module per ``dp-audit`` subcommand: ``add_parser(subparsers)`` and ``run(args) -> int``."""
