"""A wrapper in the shape of Snakemake's: upper-case the input, append params.suffix, log a line."""

with open(snakemake.input[0]) as src:
    text = src.read()
with open(snakemake.output[0], "w") as dst:
    dst.write(text.upper().rstrip("\n") + snakemake.params.suffix + "\n")
with open(snakemake.log[0], "w") as log:
    log.write(f"{snakemake.rule}: {snakemake.wildcards.name} with {snakemake.threads} thread(s)\n")
