"""`python -m encseg ...` (and `torchrun ... -m encseg train ...`) run the command line."""

from encseg.cli import main

main()
