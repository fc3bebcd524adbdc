"""The one rich progress bar of long work: training epochs (engine) and media extraction
(extract.pipeline). Rank 0 / the main process only; disabled, it draws nothing.

Example:
    >>> with ProgressBar("extracting", 8, enabled=False) as bar:   # doctest: +SKIP
    ...     bar.advance()
"""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """A bar with `total` steps: description, bar, n/total, the `fields` given (e.g. loss),
    elapsed and remaining time. `advance(**fields)` moves it one step; `close()` removes it
    (`transient`) or leaves it drawn."""

    def __init__(self, description: str, total: int, *, enabled: bool = True, console: Any = None,
                 fields: dict[str, float] | None = None, transient: bool = False):
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        fields = dict(fields or {})
        shown = [TextColumn(f"{k} {{task.fields[{k}]:.4f}}") for k in fields]
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *shown,
                            TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console or Console(stderr=True), transient=transient)
        self.task = self.bar.add_task(description, total=total, **fields)
        self.bar.start()

    def advance(self, description: str | None = None, **fields: float) -> None:
        """One step done; a new `description` replaces the first (e.g. "loading" -> "extracting")."""
        if self.enabled:
            extra = {} if description is None else {"description": description}
            self.bar.update(self.task, advance=1, **extra, **fields)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
