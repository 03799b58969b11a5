"""The study's web page (`histomlf web`): upload patches or a patient's folder, see the model.

FastAPI + Jinja2 templates + one CSS file, all served by the app (no JavaScript, no CDN).
`app.create_app(scorer)` builds the app around a `scorer.Scorer` (the registered model, loaded
once through its MLflow pyfunc); `server.serve` runs it with uvicorn.
"""
