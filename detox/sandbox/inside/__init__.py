"""Everything that runs INSIDE the sandbox, on hostile bytes: one package, one door.

* :mod:`~detox.sandbox.inside.child`: the process a provider starts for one converter run;
* :mod:`~detox.sandbox.inside.zygote`: the resident converter host that forks one child per document;
* :mod:`~detox.sandbox.inside.office_host`: the LibreOffice host (run as a script by the system Python);
* :mod:`~detox.sandbox.inside.wire`: the one message framing both sides speak;
* :mod:`~detox.sandbox.inside.converters`: the converters (image, pdf, office, archive, selftest) and
  the lookup of plugin converters.

The rules of the wall, checked by tests/unit/test_sandbox_boundary.py:

* **The inside imports nothing of the host.** Its modules import the standard library, the parsing
  libraries they need, each other, and :mod:`detox.sandbox.contract` (a leaf: standard library and
  :mod:`~detox.sandbox.inside.wire` only). Never the pipeline, filters, config, spool, service, audit,
  quarantine, the CLI, nor the host half of :mod:`detox.sandbox`.
* **The host imports nothing of the inside but through** :mod:`detox.sandbox.contract`: held reasons,
  output types, formats, limits and the framing are there. A filter that imports a converter would
  parse with Pillow, lxml or pikepdf in the server process, outside the sandbox.
* **The child imports only converters it may run**: a built-in converter (a module of
  :mod:`detox.sandbox.inside.converters` named in ``contract.BUILTIN_CONVERTERS``) or one a plugin
  registered in the ``detox.converters`` entry-point group (``name = "package.module:main"``), never a
  module of detox outside this package (see :func:`detox.sandbox.inside.converters.load`).
"""
