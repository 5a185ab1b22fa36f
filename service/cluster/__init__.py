"""Past one machine: several API nodes and GPU workers on one PostgreSQL database.

    queue        procrastinate tickets: a held job's run, queued in the same transaction
                 that marks it held, pulled by a worker that has its models (queue.py)
    roster       which workers are alive, in which pool, with which models (roster.py)
    leadership   one coordinator at a time, by a PostgreSQL advisory lock (leadership.py)
    coordinator  what that node does: the clocks, reconciling, stalled runs, the chain sender,
                 remote pins and collection runs (coordinator.py)
    worker       the `satscale worker` process: engines, no HTTP (worker.py)

The embedded single-box path (SQLite, one process) uses none of this.
"""
