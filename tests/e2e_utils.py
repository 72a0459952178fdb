"""Running the project's tools as a user would, in subprocesses."""
import os
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT


def run_tool(args, timeout=600, env=None, check=True):
    """Runs ``args`` (a tools/ script and its arguments) from the repository
    root; returns (returncode, combined output, seconds)."""
    full_env = dict(os.environ)
    full_env.update({
        'PYTHON': sys.executable,
        'OMP_NUM_THREADS': '1',
        'MKL_NUM_THREADS': '1',
        'PYTHONUNBUFFERED': '1',
    })
    full_env.update(env or {})
    if args[0].endswith('.sh'):
        cmd = ['bash'] + list(args)
    else:
        cmd = [sys.executable] + list(args)
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)
    seconds = time.time() - start
    if check and proc.returncode != 0:
        raise AssertionError(
            f'{" ".join(cmd)} failed ({proc.returncode}):\n'
            f'{proc.stdout[-6000:]}')
    return proc.returncode, proc.stdout, seconds
