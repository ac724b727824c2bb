"""Recipients who asked to receive no more SMS, and the platform's own blacklist signals."""
