"""The ``benchmark:`` file of a step, in Snakemake's tab-separated layout.

Snakemake's columns are kept so existing analysis scripts keep reading them; values flowmake does
not measure (virtual/unique/proportional memory, I/O, load) are written as NA.
"""

from __future__ import annotations

import os

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def write_benchmark(path: str, runtime_s: float, peak_rss_kb: int | None) -> None:
    rss = f"{peak_rss_kb / 1024:.2f}" if peak_rss_kb else "NA"
    row = f"{runtime_s:.4f}\t{_clock(runtime_s)}\t{rss}\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(HEADER + row)
    os.replace(tmp, path)
