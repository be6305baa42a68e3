"""For plugin authors: ``plugins check`` (static checks and smoke runs), test helpers,
the package scaffold and the plugin catalogue."""
