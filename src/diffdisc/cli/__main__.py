"""`python -m diffdisc.cli ...` (torchrun / accelerate launch -m diffdisc.cli) runs the console script."""

from . import main

main()
