# script: paths are relative to the file that defines the rule (workflow/rules/count.smk).
total = sum(int(open(path).read().split()[2]) for path in snakemake.input)
with open(snakemake.output[0], "w") as out:
    out.write(f"{total}\n")
