"""The local write-ahead journal that makes an event durable before we answer 200."""

from .appender import Journal, JournalFull, JournalUnavailable
from .reader import JournalReader

__all__ = ["Journal", "JournalFull", "JournalReader", "JournalUnavailable"]
