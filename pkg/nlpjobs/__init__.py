"""nlpjobs: the six classic NLP training tasks as production batch jobs."""

__version__ = "0.1.0"
