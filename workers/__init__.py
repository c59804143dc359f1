"""openimm data plane. This package is the Celery glue (``celery_app``, ``runtime``,
``heartbeat``, ``context``, ``registry``, ``batching``, ``warmup``, ``device``, ``scrub``);
``processors/`` holds one plain processor module per job family, ``models/`` the model engines
(one base class, one module per model kind with its card, one factory) and ``media/`` the
shared media helpers."""
