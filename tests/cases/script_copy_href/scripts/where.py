import os

import helper  # a module beside the script imports

real = os.path.relpath(os.path.dirname(__real_file__))
mine = os.path.relpath(__file__)
with open(snakemake.output[0], "w") as out:
    print(real, mine, helper.WORD, os.path.exists(__real_file__), file=out)
