"""For plugin authors: ``plugins check`` (static checks, registration, smoke runs), test
helpers (:mod:`.testing`, also at ``kdzoo.testing``), the package scaffold, the plugin
catalogue, and the generator of the plugin API reference docs/api.md (:mod:`.apidoc`)."""
