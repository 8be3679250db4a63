"""jobs/slurm_multinode.sbatch passes the user's arguments to `accelerate launch` intact (no SLURM needed).

Stub `srun`, `scontrol` and `accelerate` executables on PATH stand in for the cluster: `srun` runs its
command as SLURM would for one task, `accelerate` writes the argv it received as JSON. They cover what a
real one-node cluster cannot show: a 100,000-node host list and arguments no real job would carry. The job
itself runs under a real SLURM in tests/test_slurm_cluster.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "slurm_multinode.sbatch"

STUBS = {
    # srun OPTIONS... COMMAND ARGS...: drop the options, run the command (one node's task)
    "srun": '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',
    # a large allocation: more hostnames than a pipe buffer holds, so a reader that stops at the first
    # line (head -n 1) would SIGPIPE scontrol and, under pipefail, end the job
    "scontrol": '#!/usr/bin/env bash\n[[ "$1 $2" == "show hostnames" ]] || exit 9\nprintf "node-a\\nnode-b\\n"\n'
                'seq -f "node-%06g" 1 100000\n',
    "accelerate": f"#!{sys.executable}\nimport json, os, sys\n"
                  "open(os.environ['ARGV_OUT'], 'w').write(json.dumps(sys.argv[1:]))\n",
}


def _launch(tmp_path: Path, *args: str, **env_extra: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in STUBS.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    argv_out = tmp_path / "argv.json"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ARGV_OUT": str(argv_out),
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_JOB_ID": "123457",
           **env_extra}
    subprocess.run(["bash", str(SCRIPT), *args], env=env, check=True, cwd=tmp_path, timeout=30)
    return json.loads(argv_out.read_text())


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_quoted_set_values_and_paths_with_spaces_arrive_intact(tmp_path):
    tricky = [
        "--set", "probes=[answer, feedback]",
        "--set", "pms=[{name: a b, path: \"/data/my pms/it's\"}]",
        "--set", "sampling.chat_template_kwargs={enable_thinking: false}",
        "--set", "note=$HOME `id` * ; && \\ end",
        "--set", "",
    ]
    argv = _launch(tmp_path, "bon", "configs/my dir/bon.yaml", "ckpt/out with space", *tricky,
                   GPUS_PER_NODE="4", ACCEL_CONFIG="configs/accelerate/fsdp.yaml")
    assert argv[:2] == ["launch", "--machine_rank"] and argv[2] == "1"
    options = dict(zip(argv[3:argv.index("-m"):2], argv[4:argv.index("-m"):2], strict=True))
    # the machine rank is the task's rank; the port is the job's own (20000 + job id mod 20000)
    assert options == {"--config_file": "configs/accelerate/fsdp.yaml", "--num_machines": "2",
                       "--num_processes": "8", "--main_process_ip": "node-a", "--main_process_port": "23457",
                       "--rdzv_backend": "static"}
    tail = argv[argv.index("-m"):]
    assert tail == ["-m", "pmopt.cli", "bon", "configs/my dir/bon.yaml", "--out", "ckpt/out with space", *tricky]
    assert (tmp_path / "ckpt" / "out with space" / "slurm" / "logs").is_dir()  # each task's log goes there


def test_no_extra_arguments(tmp_path):
    argv = _launch(tmp_path, "train-pm", "configs/pm/hh_rlhf_qwen.yaml", "ckpt")
    assert argv[-5:] == ["pmopt.cli", "train-pm", "configs/pm/hh_rlhf_qwen.yaml", "--out", "ckpt"]
    assert argv[argv.index("--num_processes") + 1] == "16"  # 2 tasks (one per node) x 8 GPUs (default)
    assert argv[argv.index("--main_process_port") + 1] == "23457"


def test_a_port_given_by_the_user_wins(tmp_path):
    argv = _launch(tmp_path, "train-pm", "configs/pm/hh_rlhf_qwen.yaml", "ckpt", MASTER_PORT="29555")
    assert argv[argv.index("--main_process_port") + 1] == "29555"
