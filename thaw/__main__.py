"""`python -m thaw COMMAND ...`: the same as the `thaw` console command."""

from thaw.commands import main

main()
