"""Parley's one exception tree. Every error a user can meet carries a sentence for them.

    ParleyError
    ├── InvalidInput            bad input from a person (empty, too long, broken file)
    ├── NotFound                no such object, or not yours (the same answer on purpose)
    ├── PermissionDenied        the object exists and you may not do that
    ├── AuthError               wrong name or password, expired session
    ├── ConfigurationError      the operator's set-up is wrong (missing model file, bad URL)
    ├── QuotaExceeded           a per-user daily quota is used up; `resets_at` says when
    ├── StorageError            the database failed                   (translated in one
    │   ├── StorageUnavailable  unreachable, locked, timed out          place: `parley.store.db`)
    │   └── StorageConflict     a uniqueness or reference rule refused the change
    └── ProviderError           the model could not answer            (`retryable` says if a
        ├── RateLimited         429, or our own limiter; `retry_at`     later try may work)
        ├── Overloaded          529, or an overloaded error mid-stream
        ├── ProviderUnavailable 5xx, connection failure, timeout
        ├── AuthenticationFailed 401/403: the key is wrong; never retried, operators alerted
        ├── InvalidRequest      400: a bug in what Parley sent; never retried
        ├── ProviderMisconfigured the model is not installed or set up; never retried
        ├── ContextTooLong      the prompt does not fit the model
        └── StreamInterrupted   the answer broke off; `partial_text` holds what arrived
            └── AnswerStopped   the reader stopped it (Stop, or the page moved on)

Provider SDK exceptions are translated into this tree in one place
(`parley.chat.gateway.providers.errors.translate`), database exceptions in another
(`parley.store.db`).
Pages and the CLI show `err.user_message` and never a traceback.
No message here ever contains a key.
"""

from __future__ import annotations

from datetime import datetime, timedelta


class ParleyError(Exception):
    """Base of every error Parley raises on purpose."""

    user_message: str = "Something went wrong. Please try again."

    def __init__(self, message: str | None = None, *, user_message: str | None = None) -> None:
        super().__init__(message or user_message or self.user_message)
        if user_message is not None:
            self.user_message = user_message


class InvalidInput(ParleyError):
    user_message = "That input cannot be used."

    def __init__(self, message: str) -> None:
        super().__init__(message, user_message=message)


class NotFound(ParleyError):
    user_message = "That item does not exist or is not yours."


class PermissionDenied(ParleyError):
    user_message = "You are not allowed to do that."


class GrantRequired(PermissionDenied):
    """An admin asked for another user's conversation without a recent recorded reason
    (break-glass): the page says where to give one."""

    user_message = (
        "Reading this conversation needs a reason on record first: its owner will see "
        "who looked and why."
    )


class HistoryTooLong(InvalidInput):
    """A memory strategy cannot fit the conversation into the budget at all."""

    def __init__(self, strategy: str, budget: int) -> None:
        super().__init__(
            f"This conversation no longer fits the model's context with the `{strategy}` "
            "memory strategy. Start a new conversation."
        )
        self.strategy = strategy
        self.budget = budget


class AuthError(ParleyError):
    user_message = "Wrong user name or password."


class ConfigurationError(ParleyError):
    """Written for the operator, and shown as it is: it names the setting to fix, never a secret."""

    user_message = "Parley is not set up correctly."

    def __init__(self, message: str) -> None:
        super().__init__(message, user_message=message)


def _clock(moment: datetime) -> str:
    return moment.strftime("%H:%M UTC")


class QuotaExceeded(ParleyError):
    def __init__(self, what: str, *, resets_at: datetime) -> None:
        self.resets_at = resets_at
        super().__init__(
            f"quota exceeded: {what}",
            user_message=f"You have used your {what} for today. "
            f"Your quota resets at {_clock(resets_at)} on {resets_at:%d %b}.",
        )


class StorageError(ParleyError):
    user_message = "Parley could not reach its database. Please try again in a moment."


class StorageUnavailable(StorageError):
    pass


class StorageConflict(StorageError):
    user_message = "That change conflicts with data saved meanwhile. Please try again."


class ProviderError(ParleyError):
    user_message = "The model could not answer. Please try again."
    retryable = True


class RateLimited(ProviderError):
    def __init__(self, message: str = "rate limited", *, retry_after: float, now: datetime) -> None:
        self.retry_after = max(0.0, retry_after)
        self.retry_at = now + timedelta(seconds=self.retry_after)
        # Round up to the next minute so "try again at" is never too early.
        shown = (self.retry_at + timedelta(seconds=59)).replace(second=0, microsecond=0)
        super().__init__(
            message,
            user_message="The model service is at its request limit. "
            f"Please try again at {_clock(shown)}.",
        )


class Overloaded(ProviderError):
    user_message = "The model service is overloaded right now. Please try again in a minute."


class ProviderUnavailable(ProviderError):
    user_message = "The model service cannot be reached right now. Please try again shortly."


class AuthenticationFailed(ProviderError):
    user_message = "The model service rejected Parley's API key. An administrator has been alerted."
    retryable = False


class InvalidRequest(ProviderError):
    user_message = "The model service refused Parley's request. This is a bug and has been logged."
    retryable = False


class ProviderMisconfigured(ProviderError):
    """The operator's set-up of the model is wrong; the sentence names what to fix."""

    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message, user_message=message)


class ContextTooLong(ProviderError):
    user_message = (
        "This conversation is too long for the model. "
        "Start a new conversation or shorten your message."
    )
    retryable = False


class StreamInterrupted(ProviderError):
    user_message = "The answer broke off before it was finished. What arrived is kept."

    def __init__(self, message: str | None = None, *, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text


class AnswerStopped(StreamInterrupted):
    """The reader stopped the answer (the Stop button, or the page moved on)."""

    user_message = "You stopped this answer; the text above is what arrived."
