"""Print the run folder this process gets (for test_run_folder.py).

`python tests/run_dir_script.py OUTPUT_DIR STAMP` (one process) or under `torchrun --nproc_per_node=2`;
prints `rank <r>: <folder>`.
"""

from __future__ import annotations

import os
import sys

from captioner.train.run_folder import run_dir

if __name__ == "__main__":
    print(f"rank {os.environ.get('RANK', '0')}: {run_dir(sys.argv[1], sys.argv[2])}", flush=True)
