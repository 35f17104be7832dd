"""Local accounts, sign-in throttling and server-side sessions."""

from parley.auth.accounts import AccountService, UserInfo
from parley.auth.sessions import COOKIE_NAME, Resumed, SessionService
from parley.core.domain import Principal

__all__ = ["COOKIE_NAME", "AccountService", "Principal", "Resumed", "SessionService", "UserInfo"]
