"""`python -m imgpipe.cli`, the same as the `imgpipe` console script."""

from imgpipe.cli import main

main()
