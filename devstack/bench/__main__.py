import sys

from devstack.bench.cli import main

sys.exit(main())
