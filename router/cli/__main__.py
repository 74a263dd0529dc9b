"""`python -m router.cli ...` (and `accelerate launch -m router.cli ...`): the `moe-router` command."""

from router.cli import main

main()
