"""Entry point of ``python -m nlpjobs.bench`` (``make bench``)."""

from nlpjobs.bench.cli import main

raise SystemExit(main())
