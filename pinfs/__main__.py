import sys

from pinfs.cli import main

sys.exit(main())
