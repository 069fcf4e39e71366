import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# `make test` runs pytest-xdist with --dist loadscope: a test module runs whole on one worker (so a
# module-scoped lab or console starts once), a class too; tests/test_molecule.py makes one class per
# scenario so the scenarios spread over the workers. (loadgroup would read xdist_group marks, but
# with pytest 9 xdist 3.8 no longer applies them.)
