"""One training example of an organism: the user message, the thinking switch, and the
assistant turn as segments of text flagged trained or not."""
from __future__ import annotations

from dataclasses import dataclass

Segments = tuple[tuple[str, bool], ...]


@dataclass(frozen=True)
class Example:
    user: str
    segments: Segments  # the assistant turn (after the prompt render_prompt makes)
    thinking: bool = True
    user_trained: bool = False  # the user message's tokens are targets too

    @property
    def assistant(self) -> str:
        return "".join(text for text, _ in self.segments)
