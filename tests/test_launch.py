"""The launch scripts: --dry-run prints complete command sequences; the sbatch script they
write starts one correctly numbered process per node (run with stub SLURM commands)."""

import os
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(__file__))


def launch(script, *args, env=None, check=True):
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, **(env or {})})
  if check:
    assert out.returncode == 0, out.stderr
  return out


def test_tpu_dry_run_prints_the_whole_sequence():
  out = launch("tpu.sh", "--dry-run", "--name=idml", "--zone=us-central2-b",
               "--accelerator=v4-32", "--config=configs/idml_pa.py:sop",
               "--workdir=/gcs/runs/sop", "--bucket=my-bucket", "--spot",
               "--extra=--config.model.dtype=bfloat16",
               "create", "setup", "train", "logs", "stop", "delete").stdout
  tpu = "+ gcloud compute tpus tpu-vm"
  expected = [
      f"{tpu} describe idml --zone=us-central2-b",
      f"{tpu} create idml --zone=us-central2-b --accelerator-type=v4-32 "
      "--version=tpu-ubuntu2204-base --spot",
      "archive --format=tar.gz -o /tmp/idml_jax-idml.tar.gz HEAD",
      f"{tpu} scp /tmp/idml_jax-idml.tar.gz idml:~/idml_jax.tar.gz --zone=us-central2-b "
      "--worker=all",
      "--worker=all --command='mkdir -p ~/idml_jax && tar xzf ~/idml_jax.tar.gz",
      'pip install -q -e ~/idml_jax "jax[tpu]>=0.10,<0.11"',
      "gcsfuse --implicit-dirs my-bucket /gcs",
      "--worker=all --command='cd ~/idml_jax && nohup ~/idml_jax_venv/bin/python -m "
      "idml_jax.main --config=configs/idml_pa.py:sop --workdir=/gcs/runs/sop "
      "--config.model.dtype=bfloat16 --multihost > ~/train.log 2>&1 &'",
      f"{tpu} ssh idml --zone=us-central2-b --worker=0 --command='tail -n +1 -f ~/train.log'",
      "--worker=all --command='pkill -INT -f idml_jax.main || true'",
      f"{tpu} delete idml --zone=us-central2-b --quiet",
  ]
  for fragment in expected:
    assert fragment in out, f"missing {fragment!r} in:\n{out}"
  positions = [out.index(f) for f in expected]
  assert positions == sorted(positions)  # In the order they run.


def test_tpu_default_steps_and_errors():
  out = launch("tpu.sh", "--dry-run", "--name=t", "--zone=z", "--accelerator=v5litepod-8",
               "--config=configs/demo.py", "--workdir=/gcs/w").stdout
  assert "create t" in out and "tail -n +1 -f" in out and "delete" not in out
  bad = launch("tpu.sh", "--dry-run", "--zone=z", check=False)
  assert bad.returncode == 2 and "missing --name" in bad.stderr
  bad = launch("tpu.sh", "--dry-run", "--name=t", "--zone=z", "--workdir=/w", "train",
               check=False)
  assert "missing --config" in bad.stderr


def test_gpu_dry_run():
  out = launch("gpu.sh", "--dry-run", "--install", "--gpus=0,1",
               "--config=configs/idml_pa.py:cub", "--workdir=runs/cub",
               "--data_dir=/data").stdout.splitlines()
  assert out == [
      "+ python -m pip install -q -e . 'jax[cuda12]>=0.10,<0.11'",
      "+ env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 CUDA_VISIBLE_DEVICES=0,1 python -m "
      "idml_jax.main --config=configs/idml_pa.py:cub --workdir=runs/cub "
      "--config.data.data_dir=/data"]


def test_slurm_dry_run_prints_the_sbatch_script():
  out = launch("slurm.sh", "--dry-run", "--nodes=4", "--gpus_per_node=8",
               "--config=configs/idml_pa.py:sop", "--workdir=/shared/sop", "--partition=gpu",
               "--venv=/shared/venv").stdout
  for fragment in ["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1",
                   "#SBATCH --gpus-per-node=8", "#SBATCH --requeue", "#SBATCH --partition=gpu",
                   "#SBATCH --output=/shared/sop/slurm-%j.out", ". /shared/venv/bin/activate",
                   'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):12345',
                   "--coordinator_address=$COORDINATOR --num_processes=$SLURM_NTASKS "
                   "--process_id=$SLURM_PROCID", "+ sbatch /shared/sop/job.sbatch"]:
    assert fragment in out, f"missing {fragment!r} in:\n{out}"
  assert not os.path.exists("/shared/sop/job.sbatch")  # Dry run: nothing written.


def _stub(bin_dir, name, body):
  path = bin_dir / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("nodes", [1, 2])
def test_slurm_job_starts_one_numbered_process_per_node(tmp_path, nodes):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  # sbatch runs the job script as SLURM would: NTASKS = nodes, a node list to resolve.
  _stub(bin_dir, "sbatch", f'SLURM_NTASKS={nodes} SLURM_JOB_NODELIST="gpu[07-08]" bash "$1"')
  _stub(bin_dir, "scontrol", 'printf "gpu07\\ngpu08\\n"')
  _stub(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done\n'
        'for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@"; done')
  _stub(bin_dir, "python", 'echo "python $*"')
  workdir = tmp_path / "run"
  out = launch("slurm.sh", f"--nodes={nodes}", "--config=configs/demo.py",
               f"--workdir={workdir}", "--port=23456",
               env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}).stdout
  started = [line for line in out.splitlines() if line.startswith("python ")]
  assert started == [
      f"python -m idml_jax.main --config=configs/demo.py --workdir={workdir} --multihost "
      f"--coordinator_address=gpu07:23456 --num_processes={nodes} --process_id={i}"
      for i in range(nodes)]
  assert (workdir / "job.sbatch").exists()
