"""The HTTP face of the broker: a REST API, a live event stream, Prometheus metrics and the
dashboard, all served by the broker process on its own event loop (uvicorn inside it).

Like the protocol routes, these are thin: check the request, call the core service
(:mod:`conveyor.broker.core`), shape the JSON. Nothing here changes a job by itself.
"""
