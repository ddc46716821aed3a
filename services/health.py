"""Liveness and readiness of a process. Each long-running part registers a check that names
why it is not ready (None when it is); /readyz is ready when no check has a reason."""

from __future__ import annotations

from collections.abc import Callable

Check = Callable[[], str | None]


class Health:
    def __init__(self) -> None:
        self._checks: list[Check] = []

    def add(self, check: Check) -> None:
        self._checks.append(check)

    def reasons(self) -> list[str]:
        """Why the process is not ready; [] when it is."""
        return [reason for check in self._checks if (reason := check()) is not None]
