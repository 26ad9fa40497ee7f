"""A toy stand-in for `bwa mem | samtools view`: exact seed match, SAM-like text out.

Deterministic and dependency-free so the tutorial case runs anywhere. Reads are placed where
their first SEED bases occur first in the genome; no seed hit means unmapped (flag 4).
"""
import argparse
import sys

SEED = 12


def read_fasta(path: str) -> dict[str, str]:
    contigs: dict[str, list[str]] = {}
    name = ""
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line.startswith(">"):
                name = line[1:].split()[0]
                contigs[name] = []
            elif line:
                contigs[name].append(line)
    return {k: "".join(v) for k, v in contigs.items()}


def read_fastq(path: str):
    with open(path) as fh:
        lines = [ln.rstrip("\n") for ln in fh]
    for i in range(0, len(lines) - 3, 4):
        yield lines[i][1:], lines[i + 1], lines[i + 3]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rg", required=True, help="read group line, tabs written as \\t (as bwa -R)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("genome")
    ap.add_argument("reads")
    args = ap.parse_args()
    genome = read_fasta(args.genome)
    rg = args.rg.replace("\\t", "\t")
    rg_id = next(f[3:] for f in rg.split("\t") if f.startswith("ID:"))
    print("@HD\tVN:1.6\tSO:unsorted")
    for name, seq in genome.items():
        print(f"@SQ\tSN:{name}\tLN:{len(seq)}")
    print(rg)
    total = mapped = 0
    for qname, seq, qual in read_fastq(args.reads):
        total += 1
        hit = next(((c, s.find(seq[:SEED])) for c, s in genome.items() if seq[:SEED] in s), None)
        if hit is None:
            print(f"{qname}\t4\t*\t0\t0\t*\t{seq}\t{qual}\tRG:Z:{rg_id}")
            continue
        mapped += 1
        print(f"{qname}\t0\t{hit[0]}\t{hit[1] + 1}\t60\t{len(seq)}M\t{seq}\t{qual}\tRG:Z:{rg_id}")
    print(f"[align] threads={args.threads} reads={total} mapped={mapped}", file=sys.stderr)


if __name__ == "__main__":
    main()
