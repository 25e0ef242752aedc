"""adjustments: cancel Stripe meter events asynchronously through a Celery queue."""

__version__ = "0.1.0"
