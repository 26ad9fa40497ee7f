# Runs with the `snakemake` object, as under Snakemake.
value = int(open(snakemake.input.main).read())
with open(snakemake.output[0], "w") as out:
    out.write(f"{snakemake.rule} {snakemake.wildcards.name} {value * snakemake.params.factor} "
              f"{snakemake.config['label']} threads={snakemake.threads}\n")
with open(snakemake.log[0], "w") as log:
    log.write("ok\n")
