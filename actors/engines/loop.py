"""Reaching an engine's event loop from its worker thread, or from close() on any thread.

Both local engines run the model on a worker thread and settle their callers' futures on the
event loop that serves them; these are the things that needs."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def settle(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    """Give a caller's future its result or error, unless it is done already (the caller
    left, or a failure reached it first). On the future's loop."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def call_in_loop(loop: asyncio.AbstractEventLoop | None, fn: Callable[[], object]) -> None:
    """Run `fn` on `loop`: now when called from it, else as soon as it can. A loop that is
    gone has no callers left to tell."""
    if loop is None or loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        fn()
    else:
        loop.call_soon_threadsafe(fn)


def stop_serving(task: asyncio.Task | None, loop: asyncio.AbstractEventLoop | None) -> None:
    """Cancel an engine's serving task, unless it is the one asking (an engine that closes
    itself after a failure just returns)."""
    if task is None or task.done():
        return
    try:
        current = asyncio.current_task()
    except RuntimeError:  # no running loop: close() from another thread
        current = None
    if task is not current:
        call_in_loop(loop, task.cancel)
