"""trioproxy: an LLM streaming gateway on trio structured concurrency.

The package reads in request order: ``app`` → ``routes``/``limits`` → ``relay``
(``upstream`` → channel → client) → ``records``/``detached``. ``sse`` and
``mock_scripts`` are sans-IO.
"""

__version__ = "0.1.0"
