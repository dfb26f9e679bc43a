import sys

from whisperkv.reference.app.cli import main

sys.exit(main())
