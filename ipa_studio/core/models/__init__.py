"""Model library: known downloads, local files, architecture detection, safe loading."""
