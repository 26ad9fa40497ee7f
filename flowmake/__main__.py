"""``python -m flowmake``: the ``flowmake`` command.

Python's own SIGINT handler is in place before this module runs: a Ctrl-C while the CLI is being
imported arrives as KeyboardInterrupt here, and must end like any other interrupt (one line, 130).
"""

try:
    from flowmake.cli import entry
except KeyboardInterrupt:
    import os
    import sys

    sys.stderr.write("flowmake: interrupted\n")
    sys.stderr.flush()
    os._exit(130)

entry()
