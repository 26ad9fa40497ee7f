from flowmake.cli import entry

entry()
