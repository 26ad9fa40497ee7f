"""Checkpoint script: deal one day's aligned reads into chunks of `params.size` reads.

The number of chunks is only known once trimming has run, which is why the rule is a
checkpoint. Chunk files are 1.tsv, 2.tsv, ... inside the checkpoint's output directory.
"""
import os

out_dir = snakemake.output[0]  # noqa: F821 - injected by the workflow engine
size = int(snakemake.params.size)  # noqa: F821
rows = []
for path in snakemake.input:  # noqa: F821
    sample = os.path.basename(path).rsplit(".", 1)[0]
    with open(path) as fh:
        rows += [f"{sample}\t{line}" for line in fh]
rows.sort()  # by sample, then read name: stable however the inputs were ordered

os.makedirs(out_dir, exist_ok=True)
chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
for n, chunk in enumerate(chunks, start=1):
    with open(os.path.join(out_dir, f"{n}.tsv"), "w") as fh:
        fh.writelines(chunk)
with open(snakemake.log[0], "w") as log:  # noqa: F821
    log.write(f"{len(rows)} reads -> {len(chunks)} chunks of <= {size}\n")
