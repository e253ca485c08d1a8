"""``python -m fasttarget.cli`` (and ``torchrun -m fasttarget.cli``) runs the CLI."""

from fasttarget.cli import main

main()
