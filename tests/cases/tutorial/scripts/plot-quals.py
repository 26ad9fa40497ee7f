"""Histogram of variant qualities as a small SVG (the tutorial plots with matplotlib).

Run through `script:`, so Snakemake (or flowmake) provides the `snakemake` object.
"""
quals = []
with open(snakemake.input[0]) as fh:  # noqa: F821 - injected by the workflow engine
    for line in fh:
        if not line.startswith("#"):
            quals.append(float(line.split("\t")[5]))

width = snakemake.params.bin_width  # noqa: F821
bins: dict[int, int] = {}
for q in quals:
    bins[int(q // width)] = bins.get(int(q // width), 0) + 1

bars = []
for i, b in enumerate(sorted(bins)):
    h = 20 * bins[b]
    bars.append(f'  <rect x="{10 + 30 * i}" y="{110 - h}" width="25" height="{h}"/>'
                f'<text x="{10 + 30 * i}" y="125" font-size="8">{b * width}</text>')
with open(snakemake.output[0], "w") as out:  # noqa: F821
    out.write('<svg xmlns="http://www.w3.org/2000/svg" width="320" height="130">\n')
    out.write(f"  <title>QUAL histogram, {len(quals)} calls</title>\n")
    out.write("\n".join(bars) + "\n</svg>\n")
