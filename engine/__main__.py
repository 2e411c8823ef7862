import sys

from .cli import main
from .distributed import exit_launched, launched

code = main()
if launched():
    exit_launched(code)
sys.exit(code)
