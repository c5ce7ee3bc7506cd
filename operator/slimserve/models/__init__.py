"""Model families SlimServe knows how to build, compress, save and serve."""
