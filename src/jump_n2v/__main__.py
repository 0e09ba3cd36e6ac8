import sys

from jump_n2v.cli import main

sys.exit(main())
