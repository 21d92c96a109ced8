"""Thin command modules of the CLI; each provides ``configure_parser`` and ``run_command``."""
