"""`python -m llmcycle`: the same as the `llmcycle` command (the launcher starts training processes this way)."""

from .cli import main

main()
