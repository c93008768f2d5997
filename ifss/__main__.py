import sys

from ifss.cli import main

sys.exit(main())
