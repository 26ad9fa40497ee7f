import os

# __file__ is the script itself; __real_file__ is the copy that runs (.snakemake/scripts/).
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "data.txt")) as src, open(snakemake.output[0], "w") as out:
    out.write(src.read())
    out.write(f"{os.path.basename(__file__)}\n")
