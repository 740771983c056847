"""Named presets, the method grid and the reports built on top of the training library."""
