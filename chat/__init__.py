"""Conversations and the chat service that streams answers from a provider.

Import from the modules (`chat.service`, `chat.conversations`, `chat.providers`);
this package file stays empty so `memory` can import `chat.providers` without a cycle.
"""
