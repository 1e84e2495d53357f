import sys

from impls.testing.model_check.cli import main

sys.exit(main())
