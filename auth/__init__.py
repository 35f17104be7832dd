"""Accounts, password hashing, login sessions and the `Principal` every service call takes."""

from auth.accounts import AccountService, UserInfo
from auth.session import LoginSession
from parley.domain import Principal

__all__ = ["AccountService", "LoginSession", "Principal", "UserInfo"]
