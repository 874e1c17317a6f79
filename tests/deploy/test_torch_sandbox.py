"""What the daemon's torch code needs from its sandbox, checked by running it in one.

- ProtectSystem=strict, ProtectHome=yes (systemd) and readOnlyRootFilesystem (Kubernetes): a
  model is fitted and scores with `/` read-only and $HOME missing, as long as a temporary
  directory is writable (PrivateTmp=, the /tmp emptyDir); without one it fails, because
  torch.optim imports torch._dynamo, which creates $TMPDIR/torchinductor_<user>.
- MemoryDenyWriteExecute=: torch's oneDNN backend generates code at run time, so a model
  fails under W^X (the kernel's PR_SET_MDWE, which enforces the rule systemd's option does).
  The unit therefore says MemoryDenyWriteExecute=no; this test fails once that is no longer
  needed, so the unit can be tightened.

The read-only root is made with `unshare --mount` (a private mount namespace: nothing changes
outside the child), which needs root, as `make install` and CI run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "aemon.service"
TMP_DIRS = ("/tmp", "/var/tmp")  # where Python's tempfile looks once $TMPDIR is unset

# Fits and scores one small model with the daemon's own Detector.
PROBE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    if {mdwe!r}:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            print("MDWE-UNSUPPORTED", ctypes.get_errno())
            sys.exit(3)
    import numpy as np
    from service.core.config import ModelSettings, ThresholdSettings
    from service.scoring.detector import Detector
    windows = np.random.default_rng(0).normal(size=(80, 20, 4)).astype(np.float32)
    detector = Detector.new(("a", "b", "c", "d"), 20, ModelSettings(kind="dense", epochs=2))
    detector.fit(windows, ThresholdSettings())
    scores, _ = detector.score_many(windows[:8])
    assert scores.shape == (8,)
    # The pipeline's way: stacked (a TorchScript plan), here for two machines.
    from service.scoring.stacked import StackedScorer
    work = {{m: (detector.clone(), windows[:8]) for m in ("m1", "m2")}}
    scorer = StackedScorer()
    stacked = scorer.score(work)
    assert [g.uses_vmap for g in scorer.groups.values()] == [False]
    assert np.allclose(stacked["m1"][0], scores, rtol=1e-5, atol=1e-6)
    print("PROBE-OK")
    """
)


def probe(*, mdwe: bool = False) -> str:
    return PROBE.format(repo=str(REPO), mdwe=mdwe)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")}
    env.update(HOME="/nonexistent-home", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def run_read_only(writable_tmp: bool) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("a private read-only mount namespace needs root (make install runs as root)")
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is missing"
    steps = ["mount --make-rprivate /", "mount -o remount,bind,ro /"]
    # The host's temporary directories become read-only too (they may hold this checkout,
    # so they are not hidden); a writable one is a fresh tmpfs, as PrivateTmp= gives.
    steps += [f"if mountpoint -q {d}; then mount -o remount,bind,ro {d}; fi" for d in TMP_DIRS]
    if writable_tmp:
        scratch = next(d for d in TMP_DIRS if not REPO.is_relative_to(d))
        steps.append(f"mount -t tmpfs tmpfs {scratch}")
    steps.append('cd / && exec "$0" -c "$1"')
    return subprocess.run(
        [unshare, "--mount", "sh", "-ec", " && ".join(steps), sys.executable, probe()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env(),
    )


def test_torch_fits_and_scores_with_only_a_writable_tmp() -> None:
    result = run_read_only(writable_tmp=True)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "PROBE-OK" in result.stdout


def test_torch_fails_without_any_writable_tmp() -> None:
    """Why PrivateTmp= and the /tmp emptyDir are needed."""
    result = run_read_only(writable_tmp=False)
    assert result.returncode != 0, "torch no longer needs a temporary directory"
    assert "No usable temporary directory" in result.stderr, result.stderr[-3000:]


def test_torch_needs_write_execute_memory() -> None:
    result = subprocess.run(
        [sys.executable, "-c", probe(mdwe=True)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env(),
        cwd=REPO,
    )
    if "MDWE-UNSUPPORTED" in result.stdout:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode != 0, (
        "torch now runs with W^X enforced: set MemoryDenyWriteExecute=yes in "
        "deploy/systemd/aemon.service"
    )
    assert "could not create a primitive" in result.stderr, result.stderr[-3000:]
    settings = re.findall(r"^MemoryDenyWriteExecute=(\S+)", UNIT.read_text(), re.M)
    assert settings == ["no"]
