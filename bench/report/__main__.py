import sys

from bench.report.document import main

sys.exit(main())
