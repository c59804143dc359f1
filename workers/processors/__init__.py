"""Processors: one module per job family, each a plain ``def process(ctx: JobContext)``.

A processor reads its inputs through ``ctx`` (request, media, store, progress), runs model
engines (``workers.models``) and returns the task result, or a ``Transactional`` whose body
runs in the transaction that ends the task. It knows nothing of Celery and writes no SQL: the
database side is a ``pipeline`` service it calls with the session it is handed
(``pipeline.figure_store`` for the face jobs). ``tests/unit/test_layout.py`` checks this.
"""
