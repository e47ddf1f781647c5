"""`make bench`: nlpjobs measured side by side with the course recipe on the same data, model and machine.

Each figure module measures one thing and returns :class:`~bench.records.Sample` objects (one
per repeat); :mod:`bench.records` turns them into median records, ``results.json`` and the
markdown table. Benchmarks print figures; they never fail on a slow number.
"""
