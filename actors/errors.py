"""The actors' exception tree: what serving a model or training one can fail with, and what
the scheduler does about each branch. Imports nothing, so jobs, engines and tests share it.

    ActorError
     +-- EngineError            the engine or endpoint is misconfigured (a wrong key or URL, too
     |   |                      many adapters): the shard fails and writes nothing; fix, resubmit
     |   +-- RequestError       this request cannot be served (too long, unknown adapter): the
     |   |   |                  sample becomes an error row, the rest of the shard lands
     |   |   +-- ContextLengthError   prompt + max_tokens exceed the context: a loop that grows
     |   |                            its prompt can stop there instead of losing the sample
     |   +-- TransientError     nothing is wrong with the request: the shard is retried
     |       +-- ReplicaUnavailable   the replica died or its engine closed: replaced, retried
     |       +-- EndpointUnavailable  a remote endpoint still fails after its own retries:
     |       |                        retried later, the replica that called it is kept; a
     |       |                        judge's call instead scores null with its `reason`
     |       +-- BatchFailed          one forward pass ran out of memory; the engine serves on
     +-- TrainingError          a finetune did not finish
         +-- DataError          its training data cannot be used (names the file and line; also
         |                      a ValueError): the user's to fix, nothing is trained
         +-- FinetuneFailed     a rank raised (the model, the settings): retrying will not help
         +-- RankDied           a rank's process or node was lost: a new group resumes from the
                                last checkpoint
"""
from __future__ import annotations


class ActorError(Exception):
    """Base of the actors' errors."""


class EngineError(ActorError):
    """The engine or endpoint is misconfigured: the shard fails and writes nothing."""


class RequestError(EngineError):
    """This request cannot be served (too long, unknown adapter): an error row, not a retry."""


class ContextLengthError(RequestError):
    """The prompt plus max_tokens does not fit the model's context: a loop that grows its
    prompt (decomposition, early answering) can stop there instead of losing the sample."""


class TransientError(EngineError):
    """A failure of the serving side, not of the request: retry the shard."""


class ReplicaUnavailable(TransientError):
    """The replica died or is shutting down: the pool replaces it; retry the shard."""


class EndpointUnavailable(TransientError):
    """A remote endpoint kept answering 429/5xx or timing out: retry the shard later. The
    replica that called it is fine, so the pool keeps it. `reason` names how the last attempt
    failed (the openai engine's vocabulary: rate_limited, server_error, timeout, ...), for a
    caller that records a null with its reason instead (a judge)."""

    def __init__(self, message: str, reason: str = "endpoint_unavailable") -> None:
        super().__init__(message)
        self.reason = reason  # pickled with the error (an exception's __dict__ is)


class BatchFailed(TransientError):
    """A forward pass ran out of memory; its requests failed, the engine serves on."""


class TrainingError(ActorError):
    """A finetune did not finish."""


class DataError(TrainingError, ValueError):
    """Training data that cannot be used; the message names the file and line."""


class FinetuneFailed(TrainingError):
    """A rank raised: the data, the model or the configuration is wrong; retrying won't help."""


class RankDied(TrainingError):
    """A rank's process or node was lost; a new group resumes from the last checkpoint."""
