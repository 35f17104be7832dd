"""The provider gateway: every model call goes through `LimitedProvider`, which queues it
(`admission`), meters it (`usage`, with `outbox` for a ledger that is down) and hands it to
a provider (`providers`). Nothing here knows conversations or documents."""
