#!/usr/bin/env python
"""``accelerate launch`` that ends as its script did: the script's exit code, and no launcher traceback after the
script's one-line ``error: ...``.

    python scripts/launch.py --config_file accelerate_configs/multi_gpu.yaml scripts/train.py --train_data ...

Any ``accelerate launch`` arguments work. ``accelerate launch`` itself re-raises a failed script as a
``subprocess.CalledProcessError`` (one process; ``accelerate launch -q`` silences it there) or torch elastic's
``ChildFailedError`` (several processes, where ``-q`` does not apply); both tracebacks describe the launcher, not the
problem, which the script has already printed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(argv)
    try:
        launch_command(args)
    except subprocess.CalledProcessError as error:  # one process: the script's own exit code
        return error.returncode or 1
    except ChildFailedError as error:  # several processes: the first failure's exit code
        codes = [failure.exitcode for failure in error.failures.values()]
        print(f"launch: {len(codes)} process(es) failed (see their errors above).", file=sys.stderr)
        return next((code for code in codes if code > 0), 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
