"""A site's private training: DP-SGD on images or on public-encoder features, and one-shot DP statistics."""
