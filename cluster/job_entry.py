"""Entrypoint of a submitted job (``python -m cluster.job_entry``), run by Ray's job supervisor.

Reads the resolved config YAML that ``semdistill submit`` put in ``$SEMDISTILL_JOB_CONFIG``,
writes it next to the outputs, runs it (``pipeline.run.run_config``; ``ray.init`` joins the
cluster via ``RAY_ADDRESS``) and prints one ``semdistill-summary: {json}`` line at the end.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from cluster.submit import CONFIG_ENV, FROM_STAGE_ENV, SUMMARY_PREFIX
from pipeline.config import config_from_dict, dump_config
from pipeline.core.write import atomic_write_bytes
from pipeline.errors import SemdistillError


def main() -> int:
    text = os.environ.get(CONFIG_ENV)
    if not text:
        print(f"semdistill job: ${CONFIG_ENV} is empty; submit with `semdistill submit CONFIG`",
              file=sys.stderr)
        return 2
    try:
        cfg = config_from_dict(yaml.safe_load(text), "<submitted config>")
        out = Path(cfg.output.dir).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.yaml", dump_config(cfg).encode())
        print(f"semdistill job: method={cfg.method} name={cfg.name} output={out}", flush=True)
        from pipeline.run import run_config

        summary = run_config(cfg, from_stage=os.environ.get(FROM_STAGE_ENV) or None)
    except SemdistillError as err:
        print(f"semdistill: error: {err}", file=sys.stderr)
        return 2
    summary = dict(summary or {})
    summary.setdefault("output", str(out))
    print(SUMMARY_PREFIX + json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
