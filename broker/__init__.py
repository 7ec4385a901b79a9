"""Headwater's broker side: configuration, the invocation queue and API, destinations, and the
event source pollers that feed the queue. It never imports `workers`, which drains the queue."""

__version__ = "0.1.0"
