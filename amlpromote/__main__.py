"""`python -m amlpromote` runs the same CLI as the `amlpromote` console script."""

from amlpromote.cli.app import main

main()
