"""The conversation: a chat turn from the user's text to the stored answer (`service`), the
conversations it belongs to, its prompt (`context`, `history`), its reply, title and
summaries, the work that follows an answer (`upkeep`), break-glass `grants` (who may read a
conversation) and the strategy lab."""
