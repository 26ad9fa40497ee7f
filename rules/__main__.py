"""``python -m flowmake.library``: the shipped rule fragments and where they are installed."""

from flowmake.library import names, path

for fragment in names():
    print(f"{fragment}\t{path(fragment)}")
