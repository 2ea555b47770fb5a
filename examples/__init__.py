"""Examples of using fisherpack on models that are not fisherpack's own."""
