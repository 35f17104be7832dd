"""Local accounts, sign-in throttling and server-side sessions."""

from auth.accounts import AccountService, UserInfo
from auth.sessions import COOKIE_NAME, Resumed, SessionService
from parley.domain import Principal

__all__ = ["COOKIE_NAME", "AccountService", "Principal", "Resumed", "SessionService", "UserInfo"]
