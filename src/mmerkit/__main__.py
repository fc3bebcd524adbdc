"""`python -m mmerkit ...` (what torchrun launches) is the `mmer` command."""

from mmerkit.cli import main

main()
