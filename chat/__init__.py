"""Conversations and the chat service that streams answers from a provider."""

from chat.conversations import ChatMessage, ConversationInfo, ConversationService
from chat.service import ChatService, ReplyResult, ReplyStream, clean_message_text

__all__ = [
    "ChatMessage",
    "ChatService",
    "ConversationInfo",
    "ConversationService",
    "ReplyResult",
    "ReplyStream",
    "clean_message_text",
]
