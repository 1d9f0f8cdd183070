"""The signal-quality benchmark: does the stop signal stop where it should?

Seeded, CPU-sized training runs that go well past overfitting (``scenarios``), evaluated at
every checkpoint through the product's own ``Evaluator`` (``training``), replayed through the
product's own rule engine (``outcomes``) and summarised in a table (``table``).

    python -m bench.signal_quality [--rebuild] [--jobs 2]
"""
