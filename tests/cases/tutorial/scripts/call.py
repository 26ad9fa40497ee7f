"""A toy stand-in for `bcftools mpileup | bcftools call`: mismatches against the genome.

Every position where some mapped read disagrees with the reference becomes a site; QUAL grows
with the supporting reads and the (Phred-scaled) prior mutation rate.
"""
import argparse
import math
import os
import sys
from collections import defaultdict

from align import read_fasta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fasta", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("bams", nargs="+")
    args = ap.parse_args()
    genome = read_fasta(args.fasta)
    samples = [os.path.basename(p).split(".")[0] for p in args.bams]
    depth: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    alts: dict[tuple[str, int], dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for sample, path in zip(samples, args.bams):
        with open(path) as fh:
            for line in fh:
                f = line.rstrip("\n").split("\t")
                if line.startswith("@") or f[1] == "4":
                    continue
                chrom, pos, seq = f[2], int(f[3]), f[6]
                for k, base in enumerate(seq):
                    site = (chrom, pos + k)
                    depth[site][sample] += 1
                    if base != genome[chrom][pos + k - 1]:
                        counts = alts[site][sample]
                        counts[base] = counts.get(base, 0) + 1
    prior = -10 * math.log10(args.rate)
    print("##fileformat=VCFv4.2")
    print("##source=toycall")
    print(f"##prior_mutation_rate={args.rate}")
    print("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples]))
    print(f"[call] samples={','.join(samples)} sites={len(alts)}", file=sys.stderr)
    order = {c: i for i, c in enumerate(genome)}
    for chrom, pos in sorted(alts, key=lambda s: (order[s[0]], s[1])):
        per = alts[(chrom, pos)]
        alt = sorted({b for counts in per.values() for b in counts})[0]
        support = sum(c.get(alt, 0) for c in per.values())
        dp = sum(depth[(chrom, pos)].values())
        qual = prior * support / dp + 3 * support
        calls = []
        for s in samples:
            a, d = per.get(s, {}).get(alt, 0), depth[(chrom, pos)].get(s, 0)
            calls.append(f"{'1' if a else '0'}:{d - a},{a}")
        print(f"{chrom}\t{pos}\t.\t{genome[chrom][pos - 1]}\t{alt}\t{qual:.1f}\tPASS\tDP={dp}\tGT:AD\t"
              + "\t".join(calls))


if __name__ == "__main__":
    main()
