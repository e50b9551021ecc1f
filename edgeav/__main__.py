import sys

from edgeav.cli import main

sys.exit(main())
