"""The online CTR scoring service: FastAPI app, user-state stores, model registry, Ray Serve."""
