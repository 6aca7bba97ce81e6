"""A real ``python -m control`` process on a loopback port the OS picks."""

from __future__ import annotations

from pathlib import Path

from control.process import ControlProcess as _ControlProcess


class ControlProcess(_ControlProcess):
    """``python -m control`` at debug level with its log (stderr) kept in ``log_path``."""

    def __init__(self, data_dir: Path, log_path: Path, *extra: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        super().__init__(data_dir, "--log-level", "debug", *extra, log=self._log)

    def stop(self, within_s: float = 15.0) -> int:
        """SIGINT, wait, close the log."""
        code = super().stop(within_s)
        self._log.close()
        return code


def generous_control(directory: Path, name: str, *extra: str) -> ControlProcess:
    """A fresh control plane under ``directory`` with generous rate limits (tests are
    bursty) and ``extra`` options; its log is ``<name>.log``."""
    return ControlProcess(
        directory / f"{name}-data",
        directory / f"{name}.log",
        "--rate-per-s",
        "10000",
        "--rate-burst",
        "10000",
        *extra,
    )
