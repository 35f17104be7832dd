"""Parley's one exception tree. Every error a user can meet carries a sentence for them.

    ParleyError
    ├── InvalidInput            bad input from a person (empty, too long, broken file)
    ├── NotFound                no such object, or not yours (the same answer on purpose)
    ├── PermissionDenied        the object exists and you may not do that
    ├── AuthError               wrong name or password, expired session
    ├── ConfigurationError      the operator's set-up is wrong (missing model file, bad URL)
    └── ProviderError           the model could not answer
        └── StreamInterrupted   the answer broke off; `partial_text` holds what arrived

Provider SDK exceptions are translated into this tree in one place
(`chat.providers.errors.translate`); database errors surface as `ParleyError`
from `store`. Pages show `err.user_message` and never a traceback.
"""

from __future__ import annotations


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


class AuthError(ParleyError):
    user_message = "Wrong user name or password."


class ConfigurationError(ParleyError):
    """Written for the operator, and shown as it is: it names the setting to fix, never a secret."""

    user_message = "Parley is not set up correctly."

    def __init__(self, message: str) -> None:
        super().__init__(message, user_message=message)


class ProviderError(ParleyError):
    user_message = "The model could not answer. Please try again."


class StreamInterrupted(ProviderError):
    user_message = "The answer broke off before it was finished. What arrived is kept."

    def __init__(self, message: str | None = None, *, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text
