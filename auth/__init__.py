"""Accounts, password hashing, login sessions and the `Principal` every service call takes."""

from auth.accounts import AccountService, UserInfo
from auth.principal import Principal
from auth.session import LoginSession

__all__ = ["AccountService", "LoginSession", "Principal", "UserInfo"]
