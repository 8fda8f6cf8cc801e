"""Install Debian packages the project needs on a fresh machine (CI runs as root with apt-get)."""

from __future__ import annotations

import os
import shutil
import subprocess


class AptError(RuntimeError):
    """The packages cannot be installed here; the message says why and what to run instead."""


def install(*packages: str) -> None:
    """`apt-get update && apt-get install -y PACKAGES`, only where that can work."""
    wanted = " ".join(packages)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise AptError(
            f"needs root and apt-get; install them yourself: sudo apt-get install {wanted}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=300"]  # another apt-get may hold the lock for a while
    for args in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", *packages]):
        try:
            subprocess.run(
                ["apt-get", *wait, *args],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=900,
            )
        except subprocess.CalledProcessError as error:
            tail = (error.stderr or error.stdout or "").strip()[-500:]
            raise AptError(f"apt-get {' '.join(args[:1])} {wanted} failed: {tail}") from error
        except subprocess.TimeoutExpired as error:
            raise AptError(f"apt-get {' '.join(args[:1])} {wanted} timed out") from error
