"""trioproxy: an LLM streaming gateway on trio structured concurrency.

The subpackages read in request order: ``server`` → ``admission`` → ``routing``
→ ``relay`` → ``upstream``, then ``receipts`` and ``observe``; ``testing`` holds
the mock upstream, the raw client and the chaos tools. The map, its rules and
who owns what: ``docs/architecture.md``.
"""

__version__ = "0.1.0"
