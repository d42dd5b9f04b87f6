"""Quick quality checks of a quantized checkpoint against its full-precision model."""
