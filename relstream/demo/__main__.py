"""`python3 -m relstream.demo`: see relstream/demo/stages.py."""
import sys

from relstream.demo.stages import main

sys.exit(main())
