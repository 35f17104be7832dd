"""The `parley` command (`cli.main:main`): accounts, quotas, usage, chat and benchmarks."""
