"""The `parley` command (`parley.cli.main:main`): accounts, quotas, usage, chat and benchmarks."""
