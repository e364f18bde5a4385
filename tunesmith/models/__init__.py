"""Model registry, loading, quantization and adapters."""
