"""A site's data after preprocessing: cached model inputs and cached public-encoder features."""
