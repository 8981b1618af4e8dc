"""The science's exception tree: what a job raises when its inputs cannot be used.

    JobError                  the base; never raised itself
     +-- DataFileError        a data file a job reads is wrong (also a ValueError): the message
     |                        names the file and line. Each reader subclasses it
     |                        (PromptFileError, QuestionFileError, DropFormatError, ...)
     +-- ParamsError          parameters that validate one by one but cannot run together,
     |                        e.g. a trigger scan whose probes can never make a candidate
     |                        significant (also a ValueError)
     +-- UnknownRole          a job asked its context for a role it does not declare: a bug
                              in the job, not in the sweep (also a KeyError)

DataFileError and ParamsError are the user's to fix: the command line prints them and exits
with 2. Errors of the models a job calls are the engines' (`actors.errors`).
"""
from __future__ import annotations


class JobError(Exception):
    """Base of the jobs' errors."""


class DataFileError(JobError, ValueError):
    """A data file that cannot be used: the message names the file and line."""


class ParamsError(JobError, ValueError):
    """A job's parameters that cannot run together; the message says what to change."""


class UnknownRole(JobError, KeyError):
    """A job asked for a model in a role it does not declare."""

    def __str__(self) -> str:  # KeyError's str() would quote the whole message
        return str(self.args[0]) if self.args else ""
