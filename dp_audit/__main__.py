import sys

from dp_audit.cli import main

sys.exit(main())
