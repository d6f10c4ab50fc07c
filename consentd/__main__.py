import sys

from consentd.cli import main

sys.exit(main())
