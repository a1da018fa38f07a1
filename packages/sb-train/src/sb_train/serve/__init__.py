"""Serving a trained SwitchBank: an OpenAI-compatible completions server with per-token routing.

``sb-train serve RUN_OR_CHECKPOINT`` (:mod:`.cli`) loads a checkpoint (:mod:`.served_model`) and runs the
Starlette app (:mod:`.app`) under uvicorn. Requests are validated by :mod:`.schema`, decoded in batches by
:mod:`.engine` (sampling and stop strings: :mod:`.sampling`), counted by :mod:`.metrics`; the routing
extension's JSON comes from :mod:`.routing_json`. Design: docs/design/serving.md. The HTTP stack is the
optional ``serve`` extra: importing this package needs only sb-train.
"""
