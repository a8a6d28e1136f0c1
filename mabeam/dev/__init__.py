"""Dev tooling: the dev cluster, the demo, test helpers and the local model server (:mod:`mabeam.dev.fakellm`).

Imported by tests, the demo, benchmarks and ``mabeam up``; never by a daemon
(an import contract checks it). Nothing here is part of the product's runtime.
"""
