import sys

from .processes import launched

if launched():      # a rank of `fastig ... --processes N` (or accelerate launch): it ends with its launcher
    from .app.launcher import die_with_parent
    die_with_parent()

from .app.cli import main  # noqa: E402
from .app.launcher import exit_launched  # noqa: E402

code = main()
if launched():
    exit_launched(code)
sys.exit(code)
