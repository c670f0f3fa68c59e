"""``python -m kdistill`` (what ``torchrun -m kdistill`` runs)."""

from kdistill.cli import main

main()
