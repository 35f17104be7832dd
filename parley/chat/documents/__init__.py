"""Documents: the library (upload, share, delete, search), the one rule for who may see a
document (`access`), what a search returns (`hits`) and the passages put before a question."""
