"""The ground floor every layer stands on: settings, domain values, the one error tree,
the provider-neutral model interface, token counting, logs and the background pool.
It imports nothing else of Parley."""
