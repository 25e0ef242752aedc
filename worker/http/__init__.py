"""``adjustments serve``: the JSON API (``/api/v1``), the operations console (``/console``),
``/healthz`` and the deployment's ``/metrics``, in one Starlette app served by uvicorn."""
