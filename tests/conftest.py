import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# `make test` runs pytest-xdist with --dist loadfile: every test file runs whole on one worker, so a
# module-scoped lab or console starts once, and files that share a lab never run side by side.
# (loadgroup would read xdist_group marks, but with pytest 9 xdist 3.8 no longer applies them.)
