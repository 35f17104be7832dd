"""Oversight: what admins do with what users did — review conversations, read and export
the audit trail, erase a user."""
