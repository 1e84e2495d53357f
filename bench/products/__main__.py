import sys

from bench.products import main

sys.exit(main())
