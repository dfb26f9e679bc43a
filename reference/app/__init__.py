"""The application: the `whisperkv` command (cli.py), `trace` output (trace.py) and its plot (plot.py)."""
