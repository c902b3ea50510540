import sys

from nearcast.cli import main

sys.exit(main())
