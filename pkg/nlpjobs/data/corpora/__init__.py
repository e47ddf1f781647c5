"""Offline corpora, one module each (registered in nlpjobs.data.offline.PLUGINS)."""
