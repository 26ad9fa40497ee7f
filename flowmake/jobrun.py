"""``python -m flowmake.jobrun JSON``: run one ``run:``/``script:`` step in a fresh process.

The scheduler turns such steps into this command so that every backend runs them like any shell
command. It loads the same rule file with the same config, instantiates the rule for the given
wildcards and executes its block with the working directory as cwd.
"""

from __future__ import annotations

import json
import os
import sys

from flowmake.errors import FlowmakeError


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m flowmake.jobrun JSON", file=sys.stderr)
        return 2
    job = json.loads(argv[0])
    from flowmake.flowfile import load_workflow
    from flowmake.flowfile.runtime import run_instance

    os.chdir(job["workdir"])
    try:
        workflow = load_workflow(job["flowfile"], config_overrides=job.get("config") or {},
                                 configfiles=job.get("configfiles") or [])
        run_instance(workflow, job["rule"], job.get("wildcards") or {})
    except FlowmakeError as err:
        print(str(err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
