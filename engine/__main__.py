import sys

from .app.cli import main
from .app.launcher import exit_launched
from .processes import launched

code = main()
if launched():
    exit_launched(code)
sys.exit(code)
